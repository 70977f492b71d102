"""`mimkd mi estimate|layers`: MI in nats as a tool of its own (wired to `mimkd.estimate.core`)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JSON_FIELDS = ("mi_nats", "ci_low", "ci_high", "estimator", "n", "seconds")


def main(args) -> int:
    if args.mi_command == "estimate":
        return estimate_command(args)
    return layers_command(args)


def estimate_command(args) -> int:
    from mimkd.estimate.core import estimate_mi, load_pairs, write_estimate

    x, y = load_pairs(args.data, args.x, args.y)
    result = estimate_mi(
        x,
        y,
        args.estimator,
        hidden=args.hidden,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.json,
    )
    files = write_estimate(result, args.out)
    record = {field: getattr(result, field) for field in JSON_FIELDS}
    if args.json:
        sys.stdout.write(json.dumps(record) + "\n")
        return 0
    print(f"{'estimator':<10} {'n':>7} {'MI (nats)':>10} {'95% CI':>18} {'seconds':>8}")
    print(
        f"{result.estimator:<10} {result.n:>7} {result.mi_nats:>10.4f} {f'[{result.ci_low:.3f}, {result.ci_high:.3f}]':>18} {result.seconds:>8.1f}"
    )
    print(f"-> {files['json']}, {files['curve']}")
    return 0


def layers_command(args) -> int:
    import torch

    from mimkd.data import load_dataset, make_loader
    from mimkd.errors import CheckpointError
    from mimkd.estimate.core import format_layer_table, layer_mi
    from mimkd.models.loading import load_model
    from mimkd.serialization import load_checkpoint

    student_record = load_checkpoint(args.student)
    if "config" not in student_record:
        raise CheckpointError(
            f"{args.student} is not a mimkd checkpoint; `mimkd mi layers` needs checkpoints written by mimkd."
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [dataclasses.asdict(row) for row in rows]
    (out / "layers.json").write_text(json.dumps(records, indent=2))
    _plot_layers(records, out / "layers.png")
    if args.json:
        sys.stdout.write(json.dumps(records) + "\n")
    else:
        print(format_layer_table(rows))
        print(f"-> {out / 'layers.json'}, {out / 'layers.png'}")
    return 0


def _plot_layers(records: list[dict], path: Path) -> None:
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
    axis.set_title(f"teacher-student MI per layer ({records[0]['estimator'] if records else ''})")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
