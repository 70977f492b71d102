"""`mimkd mi estimate|layers`: the CLI's side of the tool (files in, report and files out).

The output folder is checked before any data is read or critic trained; warnings go to stderr as
`mimkd: warning: ...` lines (and into the JSON), so `--json` keeps stdout one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import BinaryIO

from mimkd.estimate.report import check_output_dir, format_estimate, write_estimate
from mimkd.serialization import atomic_write, atomic_write_text


def main(args) -> int:
    if args.mi_command == "estimate":
        return estimate_command(args)
    return layers_command(args)


def _warn(lines: list[str]) -> None:
    for line in lines:
        print(f"mimkd: warning: {line}", file=sys.stderr)


def estimate_command(args) -> int:
    from mimkd.estimate.core import estimate_mi
    from mimkd.estimate.pairs import load_pairs

    check_output_dir(args.out)
    x, y = load_pairs(args.data, args.x, args.y)
    result = estimate_mi(
        x,
        y,
        args.estimator,
        preprocess=args.preprocess,
        critic=args.critic,
        hidden=args.hidden,
        steps=args.steps,
        batch_size=args.batch_size,
        ensemble=args.ensemble,
        neighbours=args.k,
        seed=args.seed,
        progress=not args.json,
    )
    files = write_estimate(result, args.out)
    _warn(result.warnings)
    if args.json:
        sys.stdout.write(json.dumps(result.summary()) + "\n")
        return 0
    print(format_estimate(result))
    print("-> " + ", ".join(str(path) for path in files.values()))
    return 0


def layers_command(args) -> int:
    import torch

    from mimkd.data import load_dataset, make_loader
    from mimkd.errors import CheckpointError
    from mimkd.estimate.layers import format_layer_table, layer_mi
    from mimkd.models.loading import load_model
    from mimkd.serialization import load_checkpoint

    out = check_output_dir(args.out)
    student_record = load_checkpoint(args.student)
    if "config" not in student_record:
        raise CheckpointError(
            f"{args.student} is not a mimkd checkpoint; `mimkd mi layers` needs checkpoints "
            "written by mimkd."
        )
    data = dict(student_record["config"]["data"])
    if args.data:
        data["name"] = args.data
    bundle = load_dataset(
        data["name"],
        root=data.get("root"),
        download=data.get("download", True),
        image_size=data.get("image_size", 0),
        channels=data.get("channels", 0),
        test_subset=args.samples,
    )
    channels, height, _ = bundle.image_shape
    models = {}
    for role, path in (("teacher", args.teacher), ("student", args.student)):
        record = load_checkpoint(path)
        models[role] = load_model(
            path,
            model_name=record.get("model_name"),
            num_classes=bundle.num_classes,
            in_channels=channels,
            image_size=height,
        ).model.eval()
    loader = make_loader(
        bundle.test, 500, mean=bundle.mean, std=bundle.std, device="cpu", train=False, num_workers=0
    )
    images = torch.cat([batch[0] for batch in loader])
    rows = layer_mi(
        models["teacher"],
        models["student"],
        images,
        estimator=args.estimator,
        max_samples=args.samples,
        steps=args.steps,
        progress=not args.json,
    )
    records = [dataclasses.asdict(row) for row in rows]
    atomic_write_text(out / "layers.json", json.dumps(records, indent=2), "--out file")
    atomic_write(out / "layers.png", lambda file: _plot_layers(records, file), "--out file")
    if args.json:
        sys.stdout.write(json.dumps(records) + "\n")
    else:
        print(format_layer_table(rows))
        print(f"-> {out / 'layers.json'}, {out / 'layers.png'}")
    return 0


def _plot_layers(records: list[dict], file: BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4, 1.4 * len(records)), 3.5))
    labels = [f"{r['teacher_layer']}\n{r['student_layer']}" for r in records]
    values = [r["mi_nats"] for r in records]
    errors = [
        [v - r["ci_low"] for v, r in zip(values, records)],
        [r["ci_high"] - v for v, r in zip(values, records)],
    ]
    axis.bar(range(len(records)), values, yerr=errors, color="tab:blue", alpha=0.8)
    axis.set_xticks(range(len(records)), labels, fontsize=7)
    axis.set_ylabel("MI (nats)")
    estimators = sorted({r["estimator"] for r in records})
    axis.set_title(f"teacher-student MI per layer ({', '.join(estimators)})")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(file, dpi=110, format="png")
    plt.close(figure)
