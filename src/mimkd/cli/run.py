"""`mimkd train|distill|pack|quickstart`: runs."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from mimkd.errors import MimkdError


def _keys_epilog(method: str | None) -> str:
    from mimkd.config import describe_keys

    lines = ["config keys (key=value overrides, dotted; defaults in brackets):"]
    for key, default, meaning in describe_keys(method):
        lines.append(f"  {key:<24} [{default}]  {meaning}")
    if method is None:
        lines.append(
            "  <method>.<key>            the method's own options: `mimkd list methods`, "
            "`mimkd distill --help method=NAME`"
        )
    return "\n".join(lines)


def _method_from_argv(argv: list[str]) -> str | None:
    for arg in argv:
        if arg.startswith("method="):
            return arg.split("=", 1)[1]
    return None


def add_parsers(sub, argv: list[str]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    quick = sub.add_parser(
        "quickstart",
        help="teacher + CE/KD/MIMKD students on Fashion-MNIST, one table",
        formatter_class=raw,
    )
    quick.add_argument("--out", default="runs/quickstart", help="output folder [runs/quickstart]")
    quick.add_argument("--seeds", type=int, default=1, help="student seeds per method [1]")
    quick.add_argument(
        "--fast", action="store_true", help="a tiny smoke version (seconds, for tests)"
    )
    quick.add_argument(
        "overrides", nargs="*", help="key=value overrides of the quickstart settings"
    )
    quick.set_defaults(handler=_quickstart)

    method = _method_from_argv(argv)
    for name, text, handler in (
        ("train", "train a model from scratch (method ce), e.g. a teacher", _train),
        ("distill", "distil a teacher into a student with a method", _distill),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=_keys_epilog(method if name == "distill" else "ce"),
            formatter_class=raw,
        )
        p.add_argument("--config", help="YAML config file (keys as below)")
        p.add_argument(
            "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt"
        )
        p.add_argument(
            "overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.05 epochs=3"
        )
        p.set_defaults(handler=handler)

    pk = sub.add_parser(
        "pack",
        help="seeds x methods at once, one process per run on one device",
        formatter_class=raw,
    )
    pk.add_argument("--config", help="YAML config file shared by every run")
    pk.add_argument("--seeds", default="0,1,2", help="comma-separated seeds [0,1,2]")
    pk.add_argument("--methods", default=None, help="comma-separated methods [the config's method]")
    pk.add_argument("--parallel", type=int, default=None, help="runs at a time [all]")
    pk.add_argument(
        "overrides", nargs="*", help="key=value overrides; `kd.temperature=2` goes to kd runs only"
    )
    pk.set_defaults(handler=_pack)


def _train(args) -> int:
    overrides = list(args.overrides)
    if any(o.startswith("method=") and o != "method=ce" for o in overrides):
        raise MimkdError(
            "`mimkd train` trains from scratch (method ce); use `mimkd distill` for other methods."
        )
    return _print_results(_run(args, ["method=ce", *overrides]))


def _distill(args) -> int:
    return _print_results(_run(args, list(args.overrides)))


def _run(args, overrides: list[str]) -> dict:
    from mimkd.engine.distributed import shutdown_distributed
    from mimkd.engine.run import run_from_args

    config_file = args.config
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise MimkdError(
                f"cannot resume: {run_dir} has no config.yaml; pass the folder of an earlier run."
            )
        config_file = str(run_dir / "config.yaml")
        overrides = [*overrides, "resume=true", f"run_dir={run_dir}"]
    try:
        return run_from_args(config_file, overrides)
    finally:
        # under torchrun: a failed process closes its connections now, so the others' pending
        # collectives fail at once instead of at dist_timeout
        shutdown_distributed()


def _print_results(results: dict) -> int:
    if int(os.environ.get("RANK", "0")) > 0:
        return 0  # under torchrun every process has the results; the first one prints them
    print(
        f"{results['method']}: best {results['best_accuracy']:.4f} (epoch {results['best_epoch']}), "
        f"last {results['last_accuracy']:.4f}, {results['wall_seconds']:.1f} s -> "
        f"{results['run_dir']}/report.md"
    )
    return 0


def _mean_spread(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


def _pack(args) -> int:
    from mimkd.engine.pack import packed_jobs, run_packed

    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    methods = args.methods.split(",") if args.methods else None
    results = run_packed(
        packed_jobs(args.config, list(args.overrides), seeds=seeds, methods=methods),
        max_parallel=args.parallel,
    )
    by_method: dict[str, list[dict]] = {}
    for result in results:
        by_method.setdefault(result["method"], []).append(result)
    print("| method | seeds | best top-1 | last top-1 | wall s / run |\n|---|---|---|---|---|")
    for method, runs in by_method.items():
        best = [r["best_accuracy"] for r in runs]
        last = [r["last_accuracy"] for r in runs]
        print(
            f"| {method} | {len(runs)} | {_mean_spread(best)} | {_mean_spread(last)} | "
            f"{statistics.mean(r['wall_seconds'] for r in runs):.0f} |"
        )
    return 0


def _quickstart(args) -> int:
    from mimkd.quickstart import run_quickstart

    run_quickstart(args.out, seeds=args.seeds, fast=args.fast, overrides=args.overrides)
    return 0
