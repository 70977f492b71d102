"""`mimkd reproduce GRID.yaml` and `mimkd report DIR...`: tables of pairs x methods x seeds."""

from __future__ import annotations

import argparse
import shlex
import sys

from mimkd.errors import MimkdError

REPRODUCE_EPILOG = """\
grid file (YAML):
  name: fashion_mnist                       # output in runs/reproduce/<name>/ unless out=DIR
  config: configs/fashion_mnist/student.yaml   # the students' recipe (optional)
  overrides: {epochs: 30, data.train_subset: 2000}   # every student run
  teacher_overrides: {}                     # every recipe teacher
  teachers:                                 # trained once and reused, or a file
    cnn_small: {config: configs/fashion_mnist/teacher.yaml, overrides: {epochs: 6}}
    # other: {checkpoint: PATH, model: NAME}   (model: only for a plain state_dict)
  pairs: [{teacher: cnn_small, student: cnn_tiny}]   # also config:, overrides:, name:
  methods: [ce, kd, crd, {name: dkd, overrides: {dkd.warmup_epochs: 3}}, dist, mimkd]
  seeds: [0, 1, 2]
An override key that starts with a method name (dkd.nckd_weight: 6) reaches that method only.

key=value arguments: a grid field (out=DIR, seeds=[0], methods=[ce,kd],
teachers.NAME.checkpoint=PATH, overrides.KEY=V, teacher_overrides.KEY=V), or a run key applied
last to every student run (epochs=2); keys that do not change results (device, data.root,
progress, log_every, data.num_workers) reach the teachers too.

Each run is identified by the hash of its resolved config and its teacher's SHA-256 and lives in
OUT/runs/<student>-<method>-s<seed>-<id>/: finished runs are skipped, stopped ones resumed from
their last.pt, so the same command continues a killed grid, and a second one runs nothing.
Outputs: OUT/results.csv, OUT/report.md, one PNG per pair, OUT/overview.png.

--shard K/N lets N machines on one shared filesystem split a grid with no scheduler, e.g. a SLURM
array: `mimkd reproduce GRID --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`. A teacher is
trained by the first shard that needs it (a claim file beside its folder); the others wait for it.
Flags (--jobs, --shard, --dry-run) go after the key=value arguments.
"""


def add_parsers(sub, argv: list[str]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "reproduce",
        help="run a grid of teachers x students x methods x seeds; one table",
        description="Run every unfinished run of a grid file, then write its table.",
        epilog=REPRODUCE_EPILOG,
        formatter_class=raw,
    )
    p.add_argument("grid", help="grid file (YAML), e.g. configs/grids/fashion_mnist.yaml")
    p.add_argument("overrides", nargs="*", help="key=value: grid fields or run keys (see below)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on the one device [1]")
    p.add_argument(
        "--shard", metavar="K/N", default=None, help="run only the K-th of N disjoint slices"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would run; train nothing")
    p.set_defaults(handler=_reproduce)

    r = sub.add_parser(
        "report",
        help="rebuild results.csv, report.md and PNGs from grid or run folders",
        description="Rebuild a grid's table from its folder (its plan.json), or a table of "
        "every finished run found under the folders given.",
        formatter_class=raw,
    )
    r.add_argument("folders", nargs="+", metavar="DIR", help="grid output folder(s) or run folders")
    r.add_argument("--out", default=None, help="where to write [the folder, when one is given]")
    r.set_defaults(handler=_report)


def _reproduce(args) -> int:
    from mimkd.reproduce import run_grid

    command = shlex.join(["mimkd", *sys.argv[1:]]) if sys.argv[1:2] == ["reproduce"] else ""
    try:
        result = run_grid(
            args.grid,
            list(args.overrides),
            jobs=args.jobs,
            shard=args.shard,
            dry_run=args.dry_run,
            command=command,
        )
    except KeyboardInterrupt:
        print(
            "mimkd: interrupted; the report shows the finished runs. Run the same command again "
            "to resume the others.",
            file=sys.stderr,
        )
        return 130
    if args.dry_run:
        _print_dry_run(result)
        return 0
    _print_outcome(result)
    failures = result.outcome.failures
    if failures:
        what, why = failures[0]
        raise MimkdError(
            f"{len(failures)} run(s) of this grid did not finish (first: {what}: {why}); the "
            f"finished ones are in {result.report}. Fix the cause and run the same command again."
        )
    return 0


def _print_dry_run(result) -> None:
    from mimkd.reproduce.runner import describe

    plan, statuses = result.plan, result.outcome.statuses
    counts = {
        state: sum(s.state == state for s in statuses)
        for state in ("new", "resume", "waits", "finished")
    }
    shard = "" if result.shard == (1, 1) else f" (shard {result.shard[0]}/{result.shard[1]})"
    print(f"grid {plan.name}{shard}: {len(statuses)} of {len(plan.units)} runs in {plan.out}")
    for key, teacher in plan.teachers.items():
        if teacher.kind == "checkpoint":
            state = f"checkpoint {teacher.source}"
        elif plan.teacher_sha256(key):
            state = f"trained ({teacher.folder})"
        else:
            state = f"to train ({teacher.folder})"
        print(f"  teacher {key}: {state}")
    for status in statuses:
        where = status.folder or "(folder named once its teacher is trained)"
        print(f"  {status.state:<8} {describe(plan, status.unit)}  {where}")
    print(
        f"would run {counts['new'] + counts['waits']} new and resume {counts['resume']}; "
        f"{counts['finished']} finished"
    )


def _print_outcome(result) -> None:
    outcome = result.outcome
    plan = result.plan
    ran = len(outcome.ran)
    skipped = sum(
        status.state == "finished" and status.unit not in outcome.ran for status in outcome.statuses
    )
    if not ran and not outcome.teachers_trained and not outcome.failures:
        print(
            f"nothing to run: all {len(outcome.statuses)} runs of this "
            f"{'shard' if result.shard != (1, 1) else 'grid'} are finished ({plan.out})."
        )
    else:
        trained = ", ".join(outcome.teachers_trained) or "none"
        print(
            f"ran {ran} run(s), skipped {skipped} finished; teachers trained: {trained}; "
            f"{outcome.wall_seconds:.0f} s"
        )
    print(
        f"{result.finished} of {len(plan.units)} runs of the grid finished. Report: {result.report}"
    )
    text = result.report.read_text() if result.report else ""
    marker = "## Summary: best top-1"
    if marker in text:
        table = text.split(marker, 1)[1].split("\n\n")[1]
        print(f"\nbest top-1 (mean ± std over seeds)\n{table}")


def _report(args) -> int:
    from mimkd.reproduce import report_folders

    path = report_folders(args.folders, args.out)
    print(f"report: {path}")
    return 0
