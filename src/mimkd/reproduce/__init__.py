"""Tables of pairs x methods x seeds from one grid file: `mimkd reproduce` and `mimkd report`.

The layers, in the order a grid flows through them:
  spec      the grid file read into typed specs (teachers, pairs, methods, seeds, overrides)
  plan      every run's config resolved and checked; identical runs shared; shards
  identity  a run's identity hash, and when its folder counts as finished
  runner    teachers once, then the unfinished runs (in this process, or packed)
  report    results.csv, report.md, one PNG per pair and an overview
  grid      the two commands as library calls

This package sits above the engine: it may import engine, config, models, data and serialization;
only the CLI and the public API import it.
"""

from __future__ import annotations

from mimkd.reproduce.grid import GridRun, report_folders, run_grid, write_grid_report
from mimkd.reproduce.plan import Plan, load_plan, parse_shard, plan_grid, shard_units
from mimkd.reproduce.spec import GridSpec, load_grid

__all__ = [
    "GridRun",
    "GridSpec",
    "Plan",
    "load_grid",
    "load_plan",
    "parse_shard",
    "plan_grid",
    "report_folders",
    "run_grid",
    "shard_units",
    "write_grid_report",
]
