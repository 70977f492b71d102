"""Teacher vs student in deployment: latency, images/s, parameters, file size and accuracy.

    python benchmarks/latency.py                                  # the quickstart's teacher and MIMKD student
    python benchmarks/latency.py --teacher T.pt --student S.pt    # any two model files mimkd reads
    python benchmarks/latency.py --cifar-pair                     # resnet32x4 vs resnet8x4 (untrained)

Each model runs in PyTorch eager, under torch.compile (where it compiles), and in onnxruntime
fp32 and int8 (static quantisation calibrated on training images), at batch 1 and batch 64, on the
CPU and, when present, the GPU (PyTorch runtimes). Inputs are real test images, normalised as in
evaluation. Latency is the median of `--repeats` timed calls after `--warmup` untimed ones; every
runtime uses the same number of threads. Accuracy is measured on the model's test set: eager on the
checkpoint (`mimkd eval`), onnxruntime on the exported files (`mimkd export --int8`); compiled
graphs compute the eager model's function, so they share its accuracy. File size is what each
runtime loads: the safetensors export for PyTorch, the .onnx files for onnxruntime.

Prints one Markdown table (teacher / student side by side, with the student/teacher ratios) and
writes it with the raw figures to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

try:
    import mimkd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimkd.deploy.evaluate import evaluate_file
from mimkd.deploy.export import export_model, first_images
from mimkd.deploy.runtime import onnx_session, open_model
from mimkd.engine.evaluate import load_test_set
from mimkd.models import create_model

ROLES = ("teacher", "student")
RUNTIMES = ("PyTorch eager", "torch.compile", "onnxruntime fp32", "onnxruntime int8")


@dataclass
class Variant:
    """One model in one runtime: a callable on prepared inputs, and what it costs to ship."""

    role: str
    runtime: str
    device: str
    run: Callable[[object], object]
    prepare: Callable[[torch.Tensor], object]
    size_bytes: int
    accuracy: float | None
    note: str = ""


@dataclass
class Timing:
    role: str
    runtime: str
    device: str
    batch: int
    median_ms: float
    images_per_s: float
    size_bytes: int
    accuracy: float | None
    note: str = ""


@dataclass
class Report:
    machine: str
    threads: int
    load_average: list[float]  # 1/5/15-minute, when the timing started
    parameters: dict[str, int]
    files: dict[str, str]
    timings: list[Timing] = field(default_factory=list)
    load_average_after: list[float] = field(default_factory=list)


def _timed(model, device: str) -> Callable:
    """A call of `model` without autograd that returns only when the device is done."""

    def run(inputs):
        with torch.inference_mode():
            out = model(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def quickstart_pair(root: Path) -> tuple[Path, Path]:
    """The newest quickstart's teacher and MIMKD student (`mimkd quickstart` writes them)."""
    teachers = sorted((root / "teachers").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
    students = sorted(root.glob("*/mimkd*/best.pt"), key=lambda p: p.stat().st_mtime)
    if not teachers or not students:
        sys.exit(f"no quickstart under {root}: run `mimkd quickstart` or pass --teacher/--student")
    return teachers[-1], students[-1]


def cifar_pair(work: Path) -> tuple[Path, Path, list[str]]:
    """The CRD pair resnet32x4 -> resnet8x4 as weight files (untrained: speed and size do not
    depend on the weights), reading Fashion-MNIST padded to 32x32 RGB (10 classes)."""
    paths = []
    for name in ("resnet32x4", "resnet8x4"):
        path = work / f"{name}_vanilla" / "weights.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(create_model(name, num_classes=10).state_dict(), path)
        paths.append(path)
    # 500 test images bound the accuracy passes the exports make (the accuracy is not reported)
    data = ["data.name=fashion_mnist", "data.image_size=32", "data.channels=3"]
    return paths[0], paths[1], [*data, "data.test_subset=500"]


def timed_ms(variant: Variant, images: torch.Tensor, warmup: int, repeats: int) -> float:
    inputs = variant.prepare(images)
    for _ in range(warmup):
        variant.run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        variant.run(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def torch_variants(role: str, module: torch.nn.Module, size: int, accuracy, args) -> list:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    variants = []
    for device in devices:
        model = module.to(device).eval()

        def prepare(images, device=device):
            return images.to(device)

        variants.append(
            Variant(role, "PyTorch eager", device, _timed(model, device), prepare, size, accuracy)
        )
        if args.no_compile:
            continue
        compiled = _timed(torch.compile(model), device)
        variants.append(Variant(role, "torch.compile", device, compiled, prepare, size, accuracy))
    return variants


def onnx_variant(role: str, runtime: str, path: Path, accuracy, threads: int) -> Variant:
    session = onnx_session(path, threads=threads)
    name = session.get_inputs()[0].name

    def prepare(images):
        return {name: np.ascontiguousarray(images.numpy(), dtype=np.float32)}

    return Variant(
        role,
        runtime,
        "cpu",
        lambda feeds: session.run(None, feeds),
        prepare,
        path.stat().st_size,
        accuracy,
    )


def prepare_role(role: str, path: Path, work: Path, overrides: list[str], args) -> tuple:
    """Export the model and build its variants; the parameter count beside them."""
    onnx = export_model(
        path,
        "onnx",
        work / f"{role}.onnx",
        overrides=overrides,
        int8="static",
        calibration_images=args.calibration_images,
    )
    weights = export_model(path, "safetensors", work / f"{role}.safetensors", overrides=overrides)
    runner = open_model(path, overrides=overrides)
    trained = not args.cifar_pair
    eager_accuracy = evaluate_file(path, overrides, device="cpu")["top1"] if trained else None
    variants = torch_variants(role, runner.module, weights.size_bytes, eager_accuracy, args)
    variants.append(
        onnx_variant(
            role,
            "onnxruntime fp32",
            onnx.path,
            onnx.fp32_accuracy if trained else None,
            args.threads,
        )
    )
    variants.append(
        onnx_variant(
            role,
            "onnxruntime int8",
            onnx.int8_path,
            onnx.int8_accuracy if trained else None,
            args.threads,
        )
    )
    parameters = sum(p.numel() for p in runner.module.parameters())
    return variants, parameters, runner


def measure(variants: list[Variant], images: torch.Tensor, args) -> list[Timing]:
    timings = []
    for batch in args.batches:
        inputs = images[:batch]
        for variant in variants:
            try:
                ms = timed_ms(variant, inputs, args.warmup, args.repeats)
            except Exception as error:  # torch.compile fails on some set-ups: report, go on
                print(f"  {variant.role} {variant.runtime} b{batch}: failed ({error})"[:200])
                continue
            timings.append(
                Timing(
                    variant.role,
                    variant.runtime,
                    variant.device,
                    batch,
                    ms,
                    batch / (ms / 1e3),
                    variant.size_bytes,
                    variant.accuracy,
                    variant.note,
                )
            )
            print(
                f"  {variant.role:<8} {variant.runtime:<17} {variant.device} b{batch}: {ms:.3f} ms"
            )
    return timings


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.2f} MB" if size_bytes >= 1e6 else f"{size_bytes / 1e3:.1f} kB"


def _load(values: list[float]) -> str:
    return "/".join(f"{value:.1f}" for value in values)


def _accuracy(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def markdown(report: Report) -> str:
    by_key = {(t.role, t.runtime, t.device, t.batch): t for t in report.timings}
    params = report.parameters
    lines = [
        f"Parameters: teacher {params['teacher']:,}, student {params['student']:,} "
        f"(student/teacher {params['student'] / params['teacher']:.3f}). {report.machine}, "
        f"{report.threads} threads, load average {_load(report.load_average)} before timing, "
        f"{_load(report.load_average_after)} after.",
        "",
        "| runtime | device | batch | latency ms (T / S) | images/s (T / S) | speed-up S/T "
        "| file (T / S) | size S/T | top-1 (T / S) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(t.runtime, t.device, t.batch) for t in report.timings},
        key=lambda k: (k[2], k[1], RUNTIMES.index(k[0])),
    )
    for runtime, device, batch in keys:
        teacher = by_key.get(("teacher", runtime, device, batch))
        student = by_key.get(("student", runtime, device, batch))
        if teacher is None or student is None:
            continue
        lines.append(
            f"| {runtime} | {device} | {batch} "
            f"| {teacher.median_ms:.3f} / {student.median_ms:.3f} "
            f"| {teacher.images_per_s:,.0f} / {student.images_per_s:,.0f} "
            f"| {teacher.median_ms / student.median_ms:.1f}x "
            f"| {_size(teacher.size_bytes)} / {_size(student.size_bytes)} "
            f"| {student.size_bytes / teacher.size_bytes:.3f} "
            f"| {_accuracy(teacher.accuracy)} / {_accuracy(student.accuracy)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=None)
    parser.add_argument("--student", type=Path, default=None)
    parser.add_argument("--quickstart", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--cifar-pair", action="store_true", help="resnet32x4 vs resnet8x4")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--work", type=Path, default=None, help="folder for the exports")
    parser.add_argument("--out", type=Path, default=Path("runs/latency"))
    parser.add_argument("overrides", nargs="*", help="data.* overrides for both models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = args.work or Path(tempfile.mkdtemp(prefix="mimkd-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if args.cifar_pair:
        teacher, student, pair_overrides = cifar_pair(work)
        overrides = pair_overrides + overrides
    elif args.teacher and args.student:
        teacher, student = args.teacher, args.student
    else:
        teacher, student = quickstart_pair(args.quickstart)

    variants, parameters, files = [], {}, {}
    runner = None
    for role, path in zip(ROLES, (teacher, student)):
        print(f"preparing the {role} ({path}): exports, accuracy")
        role_variants, parameters[role], runner = prepare_role(role, path, work, overrides, args)
        variants += role_variants
        files[role] = str(path)
    images = first_images(bundle := load_test_set(runner.data), bundle.test, max(args.batches))
    machine = f"{cpu_name()} ({os.cpu_count()} cores)"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    report = Report(machine, args.threads, list(os.getloadavg()), parameters, files)
    print("timing")
    report.timings = measure(variants, images, args)
    report.load_average_after = list(os.getloadavg())
    table = markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.md").write_text(table + "\n")
    (args.out / "latency.json").write_text(json.dumps(asdict(report), indent=2))
    print(f"-> {args.out / 'latency.md'}, {args.out / 'latency.json'}")


if __name__ == "__main__":
    main()
