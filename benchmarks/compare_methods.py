"""Methods (or MIMKD variants) on one pair, same data, budget and protocol: the README's tables.

    python benchmarks/compare_methods.py --seeds 2 --epochs 30            # every method
    python benchmarks/compare_methods.py --preset mimkd-sweep --seeds 3   # the MIMKD default sweep
    python benchmarks/compare_methods.py --runs kd mimkd "g03:mimkd:mimkd.beta_global=0.3"

The pair is the quickstart's (teacher cnn_small on 20k Fashion-MNIST images, reused from the
quickstart cache; student cnn_tiny on 2k labelled images). Runs go to `--workers` processes with
one thread each. Prints a Markdown table of best/last test accuracy (mean ± std over seeds), wall
time per run, and each entry's training-step time relative to KD, measured side by side in this
process on the same batches before the runs start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mimkd.config import load_config
from mimkd.data import load_dataset, make_loader
from mimkd.distillers import DISTILLERS, DistillerContext, create_distiller
from mimkd.engine.checkpoint import seed_everything
from mimkd.engine.run import run
from mimkd.errors import MimkdError
from mimkd.models import create_model
from mimkd.models.loading import load_model
from mimkd.quickstart import QuickstartSettings, teacher_checkpoint
from mimkd.serialization import sha256_of

PRESETS = {
    "mimkd-sweep": [
        "ce",
        "kd",
        "mimkd",  # default: global + local 0.1 with KD (0.1 CE + 0.9 KD), h 128
        "mimkd-alone:mimkd:mimkd.kd_weight=0,mimkd.ce_weight=1",
        "global-only:mimkd:mimkd.beta_local=0",
        "g+l-0.3:mimkd:mimkd.beta_global=0.3,mimkd.beta_local=0.3",
        "h512:mimkd:mimkd.hidden=512",
        "all-negatives:mimkd:mimkd.negatives=all",
        "linear-proj:mimkd:mimkd.student_projection=linear",
    ],
}


def parse_entry(text: str) -> tuple[str, str, list[str]]:
    """'label:method:key=v,key=v' (or just a method name) -> (label, method, overrides)."""
    parts = text.split(":", 2)
    if len(parts) == 1:
        return text, text, []
    label, method = parts[0], parts[1]
    overrides = parts[2].split(",") if len(parts) == 3 and parts[2] else []
    return label, method, overrides


def step_seconds(
    method: str, overrides: list[str], teacher_path: Path, bundle, steps: int, batch_size: int
) -> float:
    """Median seconds of one training step (forward, backward, SGD) on real batches."""
    seed_everything(0)
    _, method_config = load_config(None, [f"method={method}", *overrides])
    teacher = load_model(
        str(teacher_path), model_name=None, num_classes=10, in_channels=1, image_size=28
    ).model
    student = create_model("cnn_tiny", num_classes=10, in_channels=1)
    context = DistillerContext(10, torch.zeros(2, 1, 28, 28), len(bundle.train), total_epochs=100)
    distiller = create_distiller(method, student, teacher, context, method_config)
    distiller.on_epoch_start(99)  # main stage for methods with an init stage
    distiller.train()
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.01, momentum=0.9)
    loader = make_loader(
        bundle.train, batch_size, mean=bundle.mean, std=bundle.std, device="cpu", train=True
    )
    times, batches = [], iter(loader)
    for index in range(steps + 3):
        try:
            images, labels, indices = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels, indices = next(batches)
        start = time.perf_counter()
        output = distiller.forward_train(images, labels, indices)
        optimizer.zero_grad(set_to_none=True)
        output.total_loss.backward()
        optimizer.step()
        if index >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def one_run(job: dict) -> dict:
    torch.set_num_threads(1)
    bundle = load_dataset("fashion_mnist", train_subset=job["images"])
    try:
        config, method_config = load_config(None, job["overrides"])
        return run(config, method_config, dataset=bundle)
    except MimkdError as error:
        return {"error": str(error)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", nargs="*", default=None, help="methods or label:method:overrides [every method]"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--images", type=int, default=2000, help="labelled student images [2000]")
    parser.add_argument("--timing-steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args()
    entries = [
        parse_entry(t)
        for t in (PRESETS[args.preset] if args.preset else args.runs or DISTILLERS.names())
    ]
    out = Path(args.out)
    settings = QuickstartSettings()
    teacher_path, teacher_results = teacher_checkpoint(settings, Path("runs/quickstart"))
    bundle = load_dataset("fashion_mnist", train_subset=args.images)

    torch.set_num_threads(1)
    kd_step = step_seconds("kd", [], teacher_path, bundle, args.timing_steps, settings.batch_size)
    relative = {}
    for label, method, overrides in entries:
        try:
            relative[label] = (
                step_seconds(
                    method, overrides, teacher_path, bundle, args.timing_steps, settings.batch_size
                )
                / kd_step
            )
        except MimkdError as error:
            relative[label] = f"not applicable: {error}"

    jobs = []
    for label, method, overrides in entries:
        if isinstance(relative[label], str):
            continue
        for seed in range(args.seeds):
            jobs.append({
                "label": label,
                "images": args.images,
                "overrides": [
                    f"method={method}", "model.name=cnn_tiny", f"teacher.checkpoint={teacher_path}",
                    f"epochs={args.epochs}", f"seed={seed}", f"data.batch_size={settings.batch_size}",
                    f"optim.lr={settings.lr}", "optim.schedule=cosine", "optim.warmup_epochs=1",
                    "progress=false", f"run_dir={out / f'{label}-seed{seed}'}", *overrides,
                ],
            })  # fmt: skip
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(one_run, jobs))
    total = time.perf_counter() - start

    def fmt(values):
        if len(values) == 1:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    rows, raw = [], {}
    for label, method, overrides in entries:
        results = [o for j, o in zip(jobs, outcomes) if j["label"] == label and "error" not in o]
        errors = [
            o["error"] for j, o in zip(jobs, outcomes) if j["label"] == label and "error" in o
        ]
        raw[label] = {
            "method": method,
            "overrides": overrides,
            "results": results,
            "errors": errors,
        }
        if isinstance(relative[label], str) or not results:
            note = relative[label] if isinstance(relative[label], str) else errors[0]
            rows.append(f"| {label} | - | - | - | - | {note} |")
            continue
        best = [r["best_accuracy"] for r in results]
        last = [r["last_accuracy"] for r in results]
        wall = statistics.mean(r["wall_seconds"] for r in results)
        setting = " ".join(overrides) or "defaults"
        rows.append(
            f"| {label} | {fmt(best)} | {fmt(last)} | {wall:.0f} | {relative[label]:.2f} | {setting} |"
        )
    header = [
        f"Teacher cnn_small {teacher_results['best_accuracy']:.4f} (SHA-256 {sha256_of(teacher_path)[:16]}…); "
        f"student cnn_tiny, {args.images} labelled images, {args.epochs} epochs, batch {settings.batch_size}, "
        f"lr {settings.lr} cosine, {args.seeds} seeds, {args.workers} runs at a time on 1 thread each "
        f"({total:.0f} s in all). Step time vs KD measured on 1 thread, KD = {kd_step * 1000:.1f} ms/step.",
        "",
        "| entry | best top-1 | last top-1 | wall s / run | step time vs KD | settings / note |",
        "|---|---|---|---|---|---|",
    ]
    table = "\n".join(header + rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(raw, indent=2, default=str))
    print(table)


if __name__ == "__main__":
    main()
