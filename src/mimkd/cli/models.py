"""`mimkd eval|export|predict|list`: trained models, shipped models, and what mimkd knows."""

from __future__ import annotations

import argparse
import dataclasses
import json

MODEL_FILE_HELP = (
    "a model file: a mimkd checkpoint, a RepDistiller/mdistiller teacher, a state_dict, "
    "or an export (.onnx, .safetensors, .pt2)"
)
ARCH_HELP = "the architecture, when the file does not record it (e.g. resnet32x4)"


def add_parsers(sub, argv: list[str]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    ev = sub.add_parser("eval", help="evaluate any model file on its test set", formatter_class=raw)
    ev.add_argument("checkpoint", metavar="MODEL", help=MODEL_FILE_HELP)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--model", default=None, metavar="NAME", help=ARCH_HELP)
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda (PyTorch files)")
    ev.add_argument(
        "overrides", nargs="*", help="data.* overrides (default: the file's own data config)"
    )
    ev.set_defaults(handler=_eval)

    exp = sub.add_parser(
        "export",
        help="export a student for deployment (ONNX, safetensors, torch.export .pt2)",
        formatter_class=raw,
        description="Writes the model alone with its card (classes, input, mean/std, accuracy), "
        "checked against PyTorch on real test images before it replaces anything.",
    )
    exp.add_argument("checkpoint", metavar="MODEL", help=MODEL_FILE_HELP)
    exp.add_argument("--format", default="onnx", choices=["onnx", "safetensors", "pt2"])
    exp.add_argument("--out", default=None, help="output file (default beside MODEL)")
    exp.add_argument("--model", default=None, metavar="NAME", help=ARCH_HELP)
    exp.add_argument(
        "--int8",
        default=None,
        choices=["static", "dynamic"],
        help="also write OUT.int8.onnx quantised by onnxruntime (static: calibrated on "
        "training images) and measure its accuracy",
    )
    exp.add_argument(
        "--calibration-images", type=int, default=512, help="training images for --int8 static"
    )
    exp.add_argument("overrides", nargs="*", help="data.* overrides (the check images' dataset)")
    exp.set_defaults(handler=_export)

    pr = sub.add_parser(
        "predict",
        help="the top classes of picture files (PNG/JPEG), preprocessed as in evaluation",
        formatter_class=raw,
    )
    pr.add_argument("checkpoint", metavar="MODEL", help=MODEL_FILE_HELP)
    pr.add_argument(
        "images", nargs="+", metavar="IMAGE", help="PNG/JPEG files (data.*=... overrides too)"
    )
    pr.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    pr.add_argument("--json", action="store_true", help="print one JSON document")
    pr.add_argument("--model", default=None, metavar="NAME", help=ARCH_HELP)
    pr.set_defaults(handler=_predict)

    ls = sub.add_parser("list", help="list models, methods or datasets")
    ls.add_argument("what", choices=["models", "methods", "datasets"])
    ls.add_argument(
        "--json", action="store_true", help="print JSON (name, parameters, description)"
    )
    ls.set_defaults(handler=_list)


def _eval(args) -> int:
    from mimkd.deploy.evaluate import evaluate_file

    result = evaluate_file(
        args.checkpoint, args.overrides, model_name=args.model, device=args.device
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{args.checkpoint}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
            f"loss {result['loss']:.4f}  ({int(result['count'])} images of {result['dataset']}, "
            f"{result['format']})"
        )
    return 0


def _export(args) -> int:
    from mimkd.deploy.export import export_model

    result = export_model(
        args.checkpoint,
        args.format,
        args.out,
        model_name=args.model,
        overrides=args.overrides,
        int8=args.int8,
        calibration_images=args.calibration_images,
    )
    print(
        f"exported {args.checkpoint} -> {result.path} ({result.format}, "
        f"{_size(result.size_bytes)}; max |logit difference| {result.max_abs_diff:.1e} against "
        f"PyTorch on {result.checked_on})"
    )
    if result.int8_path is not None:
        print(
            f"int8 ({args.int8}) -> {result.int8_path} ({_size(result.int8_size_bytes or 0)}): "
            f"top-1 {result.int8_accuracy:.4f} vs fp32 {result.fp32_accuracy:.4f}"
        )
    return 0


def _predict(args) -> int:
    from mimkd.deploy.predict import predict_files
    from mimkd.errors import ConfigError

    if args.top < 1:
        raise ConfigError(f"--top {args.top}: ask for at least 1 class.")
    # `data.key=value` words are settings, the rest are image files
    overrides = [word for word in args.images if word.startswith("data.") and "=" in word]
    images = [word for word in args.images if word not in overrides]
    if not images:
        raise ConfigError("`mimkd predict` needs at least one image file after MODEL.")
    runner, predictions = predict_files(
        args.checkpoint, images, top=args.top, model_name=args.model, overrides=overrides
    )
    if args.json:
        document = {
            "model": args.checkpoint,
            "format": runner.format,
            "architecture": runner.card.architecture,
            "predictions": [dataclasses.asdict(prediction) for prediction in predictions],
        }
        print(json.dumps(document))
        return 0
    for prediction in predictions:
        ranked = "  ".join(
            f"{score.name if score.name is not None else score.index} {score.probability:.3f}"
            for score in prediction.top
        )
        print(f"{prediction.image}: {ranked}")
    return 0


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.1f} kB"


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
