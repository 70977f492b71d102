"""`mimkd reproduce` and `mimkd report` as library calls: grid file -> runs -> table.

    run_grid("configs/grids/fashion_mnist.yaml", ["seeds=[0]"], jobs=2)
    report_folders(["runs/reproduce/fashion_mnist"])

Every invocation validates the whole grid first (every run's config resolved, every name and
file checked), saves the plan (`out/plan.json`), trains what its shard lacks, appends a line to
`out/invocations.jsonl` and rewrites the report from all of the grid's finished runs, whichever
shard or machine ran them.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from mimkd.engine.report import markdown_table
from mimkd.errors import ConfigError, MimkdError
from mimkd.reproduce.plan import Plan, load_plan, parse_shard, plan_grid, shard_units
from mimkd.reproduce.report import (
    rows_from_folders,
    rows_from_plan,
    teacher_rows,
    write_report,
)
from mimkd.reproduce.runner import GridOutcome, Log, reproduce
from mimkd.reproduce.spec import load_grid


@dataclass
class GridRun:
    plan: Plan
    shard: tuple[int, int]
    outcome: GridOutcome
    report: Path | None = None
    finished: int = 0  # runs of the whole grid finished so far (every shard)
    lines: list[str] = field(default_factory=list)


def run_grid(
    path: str | Path,
    arguments: list[str] | None = None,
    *,
    jobs: int = 1,
    shard: str | None = None,
    dry_run: bool = False,
    command: str = "",
    log: Log = print,
) -> GridRun:
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: run at least one at a time (--jobs 1).")
    shard_range = parse_shard(shard)
    plan = plan_grid(load_grid(path, arguments))
    units = shard_units(plan, shard_range)
    if dry_run:
        return GridRun(plan, shard_range, reproduce(plan, units, dry_run=True, log=log))
    plan.save()
    started = time.perf_counter()
    outcome = GridOutcome(statuses=[])
    try:
        outcome = reproduce(plan, units, jobs=jobs, log=log)
    finally:  # interrupted too: the report shows what finished, the log what was attempted
        _append_invocation(plan, command, shard_range, jobs, outcome, time.perf_counter() - started)
        report = write_grid_report(plan)
    finished = sum(1 for unit in plan.units if plan.unit_results(unit) is not None)
    return GridRun(plan, shard_range, outcome, report, finished)


def _append_invocation(
    plan: Plan, command: str, shard: tuple[int, int], jobs: int, outcome: GridOutcome, wall: float
) -> None:
    record = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": command,
        "shard": f"{shard[0]}/{shard[1]}",
        "jobs": jobs,
        "teachers_trained": outcome.teachers_trained,
        "runs_started": len(outcome.ran),
        "failures": len(outcome.failures),
        "wall_seconds": round(wall, 1),
    }
    with open(Path(plan.out) / "invocations.jsonl", "a") as file:
        file.write(json.dumps(record) + "\n")


def _invocations(out: Path) -> list[dict]:
    path = out / "invocations.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return records


def write_grid_report(plan: Plan, out: str | Path | None = None) -> Path:
    rows, missing = rows_from_plan(plan)
    out = Path(out or plan.out)
    finished = sum(1 for unit in plan.units if plan.unit_results(unit) is not None)
    intro = [
        f"Grid `{plan.source}`: {len(plan.pairs)} pair(s) x {len(plan.methods)} method(s) x "
        f"{len(plan.seeds)} seed(s) = {len(plan.cells)} table cells from {len(plan.units)} runs; "
        f"{finished} of {len(plan.units)} runs finished"
        + (f" ({missing} cells still missing)." if missing else ".")
    ]
    invocations = _invocations(Path(plan.out))
    if invocations:
        recent = invocations[-8:]
        intro.append(
            "Invocations (latest last; wall = the command's own time, teachers included):\n\n"
            + markdown_table(
                ["ended", "host", "command", "shard", "jobs", "runs started", "failed", "wall"],
                [
                    [
                        r["date"],
                        r["host"],
                        f"`{r['command']}`" if r["command"] else "-",
                        r["shard"],
                        r["jobs"],
                        r["runs_started"],
                        r["failures"],
                        f"{r['wall_seconds']:.0f} s",
                    ]
                    for r in recent
                ],
            )
        )
    return write_report(
        rows, out, title=f"Grid `{plan.name}`", intro=intro, teachers=teacher_rows(plan)
    )


def report_folders(folders: list[str | Path], out: str | Path | None = None) -> Path:
    """Rebuild results.csv, report.md and the PNGs: from a grid folder's plan when given one
    grid folder, else from every run folder found under `folders`."""
    folders = [Path(folder) for folder in folders]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{str(folder)!r} is not a folder; pass grid or run folders.")
    if len(folders) == 1:
        plan = load_plan(folders[0])
        if plan is not None:
            return write_grid_report(plan, out)
    if out is None:
        if len(folders) > 1:
            raise ConfigError("several folders: say where the report goes with --out DIR.")
        out = folders[0]
    rows = rows_from_folders(folders)
    if not rows:
        raise MimkdError(
            f"no finished runs (a complete results.json) under {', '.join(map(str, folders))}."
        )
    title = "Runs under " + ", ".join(f"`{folder}`" for folder in folders)
    return write_report(rows, out, title=title)
