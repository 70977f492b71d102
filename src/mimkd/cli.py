"""The `mimkd` command. Thin: it parses arguments and calls the library.

Every `MimkdError` is caught here, once, and printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from mimkd.errors import MimkdError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def decorator(function):
        COMMANDS[name] = function
        return function

    return decorator


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


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimkd",
        description="Knowledge distillation for PyTorch, headlined by MIMKD.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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

    method = _method_from_argv(argv)
    for name, text in (
        ("train", "train a model from scratch (method ce), e.g. a teacher"),
        ("distill", "distil a teacher into a student with a method"),
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

    ev = sub.add_parser("eval", help="evaluate a checkpoint on a dataset", formatter_class=raw)
    ev.add_argument("checkpoint", help="a mimkd checkpoint (.pt)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "overrides", nargs="*", help="data.* overrides (default: the checkpoint's own data config)"
    )

    ls = sub.add_parser("list", help="list models, methods or datasets")
    ls.add_argument("what", choices=["models", "methods", "datasets"])
    ls.add_argument(
        "--json", action="store_true", help="print JSON (name, parameters, description)"
    )

    mi = sub.add_parser(
        "mi", help="estimate mutual information (nats) between paired samples or networks"
    )
    mi_sub = mi.add_subparsers(dest="mi_command", required=True, metavar="WHAT")
    est = mi_sub.add_parser("estimate", help="MI between two paired arrays (.npz, .npy pair, .pt)")
    est.add_argument("data", help="DATA.npz, X.npy,Y.npy or DATA.pt")
    est.add_argument("--x", default=None, help="key of the first array [x]")
    est.add_argument("--y", default=None, help="key of the second array [y]")
    est.add_argument(
        "--estimator", default="infonce", help="infonce | nwj | dv | smile | jsd-dv [infonce]"
    )
    est.add_argument("--steps", type=int, default=2000, help="critic training steps [2000]")
    est.add_argument("--batch-size", type=int, default=256, help="critic batch size [256]")
    est.add_argument("--hidden", type=int, default=256, help="critic width [256]")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument(
        "--out", default="runs/mi", help="folder for mi.json and the curve PNG [runs/mi]"
    )
    est.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    lay = mi_sub.add_parser(
        "layers", help="MI between teacher and student representations, layer by layer"
    )
    lay.add_argument("--teacher", required=True, help="teacher checkpoint")
    lay.add_argument("--student", required=True, help="student checkpoint")
    lay.add_argument("--data", default=None, help="dataset name (default: the student's)")
    lay.add_argument("--estimator", default="infonce")
    lay.add_argument("--samples", type=int, default=4000, help="images to embed [4000]")
    lay.add_argument("--steps", type=int, default=1000, help="critic steps per layer [1000]")
    lay.add_argument("--out", default="runs/mi_layers")
    lay.add_argument("--json", action="store_true")

    exp = sub.add_parser(
        "export",
        help="export a distilled student for deployment (ONNX, safetensors, torch.export .pt2)",
    )
    exp.add_argument("checkpoint")
    exp.add_argument("--format", default="onnx", choices=["onnx", "safetensors", "pt2"])
    exp.add_argument("--out", default=None, help="output file (default beside the checkpoint)")
    return parser


@command("train")
def _train(args) -> int:

    overrides = list(args.overrides)
    if any(o.startswith("method=") and o != "method=ce" for o in overrides):
        raise MimkdError(
            "`mimkd train` trains from scratch (method ce); use `mimkd distill` for other methods."
        )
    return _print_results(_run(args, ["method=ce", *overrides]))


@command("distill")
def _distill(args) -> int:
    return _print_results(_run(args, list(args.overrides)))


def _run(args, overrides: list[str]) -> dict:
    from mimkd.engine.run import run_from_args

    config_file = args.config
    if args.resume:
        from pathlib import Path

        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise MimkdError(
                f"cannot resume: {run_dir} has no config.yaml; pass the folder of an earlier run."
            )
        config_file = str(run_dir / "config.yaml")
        overrides = [*overrides, "resume=true", f"run_dir={run_dir}"]
    return run_from_args(config_file, overrides)


def _print_results(results: dict) -> int:
    print(
        f"{results['method']}: best {results['best_accuracy']:.4f} (epoch {results['best_epoch']}), "
        f"last {results['last_accuracy']:.4f}, {results['wall_seconds']:.1f} s -> {results['run_dir']}/report.md"
    )
    return 0


def _mean_spread(values: list[float]) -> str:
    import statistics

    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread}"


@command("pack")
def _pack(args) -> int:
    import statistics

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


@command("eval")
def _eval(args) -> int:
    from mimkd.engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.checkpoint}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}  ({result['count']} images of {result['dataset']})"
        )
    return 0


@command("list")
def _list(args) -> int:
    from mimkd.listing import listing

    rows = listing(args.what)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from mimkd.engine.report import markdown_table

    header = list(rows[0].keys()) if rows else []
    print(
        markdown_table(
            header, [[row[h] if row[h] is not None else "" for h in header] for row in rows]
        )
    )
    return 0


@command("quickstart")
def _quickstart(args) -> int:
    from mimkd.quickstart import run_quickstart

    run_quickstart(args.out, seeds=args.seeds, fast=args.fast, overrides=args.overrides)
    return 0


@command("mi")
def _mi(args) -> int:
    from mimkd import mi_tool

    return mi_tool.main(args)


@command("export")
def _export(args) -> int:
    from mimkd.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.format, args.out)
    print(f"exported {args.checkpoint} -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return COMMANDS[args.command](args)
    except MimkdError as error:
        message = " ".join(str(error).split())
        print(f"mimkd: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimkd: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
