"""`mimkd eval|export|list`: trained models and what mimkd knows."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub, argv: list[str]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ev = sub.add_parser("eval", help="evaluate a checkpoint on a dataset", formatter_class=raw)
    ev.add_argument("checkpoint", help="a mimkd checkpoint (.pt)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument(
        "overrides", nargs="*", help="data.* overrides (default: the checkpoint's own data config)"
    )
    ev.set_defaults(handler=_eval)

    exp = sub.add_parser(
        "export",
        help="export a distilled student for deployment (ONNX, safetensors, torch.export .pt2)",
    )
    exp.add_argument("checkpoint")
    exp.add_argument("--format", default="onnx", choices=["onnx", "safetensors", "pt2"])
    exp.add_argument("--out", default=None, help="output file (default beside the checkpoint)")
    exp.set_defaults(handler=_export)

    ls = sub.add_parser("list", help="list models, methods or datasets")
    ls.add_argument("what", choices=["models", "methods", "datasets"])
    ls.add_argument(
        "--json", action="store_true", help="print JSON (name, parameters, description)"
    )
    ls.set_defaults(handler=_list)


def _eval(args) -> int:
    from mimkd.engine.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.overrides)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.checkpoint}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
            f"loss {result['loss']:.4f}  ({result['count']} images of {result['dataset']})"
        )
    return 0


def _export(args) -> int:
    from mimkd.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.format, args.out)
    print(f"exported {args.checkpoint} -> {path}")
    return 0


def _list(args) -> int:
    from mimkd.engine.report import markdown_table
    from mimkd.listing import listing

    rows = listing(args.what)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    header = list(rows[0].keys()) if rows else []
    print(
        markdown_table(
            header, [[row[h] if row[h] is not None else "" for h in header] for row in rows]
        )
    )
    return 0
