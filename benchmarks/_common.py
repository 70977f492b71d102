"""What the benchmarks share: the data, the toolbox-style reference loop, and mimkd's trainer path
timed over the same window of steps.

Both paths train the same student from the same teacher on the same kind of batch (64 images,
RandomCrop(32, 4) + flip, SGD 0.05/0.9/5e-4): the reference the way RepDistiller/mdistiller do it
(PIL transforms in DataLoader workers, fp32, NCHW, `.item()` every step), mimkd through its own
`Trainer` with the fast-path flags. Timing starts after `warmup` steps (workers spun up, compile
done) and covers `steps` steps; each side synchronises the device once at each end of the window.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import mimkd  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mimkd.config import load_config
from mimkd.data import DatasetBundle, ImageTensors, load_dataset
from mimkd.distillers import DistillerContext, create_distiller
from mimkd.engine import Trainer, build_run
from mimkd.engine.fast import resolve_compile, resolve_precision
from mimkd.models import create_model

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
PROTOCOL_STEPS = 240 * 782  # 240 epochs x 782 steps at batch 64 (CIFAR-100's 50,000 images)


@dataclass
class Data:
    """A CIFAR-shaped training set: uint8 [N, 3, 32, 32] images, labels, normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str


def make_data(source: str, size: int, seed: int = 0) -> Data:
    """`synthetic`: uniform uint8 images in CIFAR-100's shape and classes (speed does not depend
    on pixel values); `fashion`: real Fashion-MNIST padded to 32x32 and repeated to RGB."""
    if source == "fashion":
        bundle = load_dataset("fashion_mnist", image_size=32, channels=3, download=False)
        images, labels = bundle.train.images, bundle.train.labels
        if size and size < len(labels):
            images, labels = images[:size], labels[:size]
        return Data(
            images.contiguous(), labels, bundle.num_classes, bundle.mean, bundle.std, "fashion"
        )
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (size,), generator=generator)
    return Data(images, labels, 100, CIFAR100_MEAN, CIFAR100_STD, "synthetic")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_models(teacher_name: str, student_name: str, num_classes: int, seed: int = 0):
    torch.manual_seed(seed)
    teacher = create_model(teacher_name, num_classes=num_classes).eval()
    student = create_model(student_name, num_classes=num_classes)
    return teacher, student


# ---- the reference: how the standard toolboxes run a step ----------------------------------------


class PILDataset(torch.utils.data.Dataset):
    """torchvision's CIFAR100 layout: HWC uint8 rows, a PIL image made per sample, then the
    transform; returns the index too, as RepDistiller's CIFAR100Instance does."""

    def __init__(self, data: Data):
        from torchvision import transforms

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.numpy()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(data.mean, data.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = self.transform(Image.fromarray(self.images[index]))
        return image, int(self.labels[index]), index


def distill_kl(student_logits, teacher_logits, temperature: float = 4.0):
    """RepDistiller's DistillKL: KL(p_t || p_s) summed, times T^2, over the batch size."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="sum")
    return kl * temperature**2 / student_logits.shape[0]


def reference_throughput(
    method: str,
    teacher_name: str,
    student_name: str,
    data: Data,
    device: torch.device,
    *,
    batch_size: int = 64,
    warmup: int = 3,
    steps: int = 20,
    workers: int = 8,
) -> dict:
    """images/s of RepDistiller's train_distill loop (KD as it computes it; other methods through
    mimkd's distiller, called the same way: fp32, NCHW, unfolded teacher, `.item()` per step)."""
    teacher, student = build_models(teacher_name, student_name, data.num_classes)
    teacher.to(device)
    student.to(device).train()
    distiller = None
    params = list(student.parameters())
    if method != "kd":
        context = DistillerContext(
            num_classes=data.num_classes,
            sample_input=torch.zeros(2, 3, 32, 32),
            num_train_samples=len(data.labels),
        )
        distiller = create_distiller(method, student, teacher, context).to(device)
        distiller.train()
        params = distiller.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(
        PILDataset(data),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )
    losses = []
    start = end = 0.0
    total = warmup + steps
    iterator = iter(loader)
    for step in range(total):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        images, labels, indices = next(iterator)
        images, labels = images.to(device).float(), labels.to(device)
        if distiller is None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            logits = student(images)
            loss = 0.1 * F.cross_entropy(logits, labels) + 0.9 * distill_kl(logits, teacher_logits)
        else:
            output = distiller(images, labels, indices.to(device))
            logits, loss = output.logits, output.total_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # AverageMeter.update(loss.item()): a host sync per step
        (logits.argmax(1) == labels).float().mean().item()
    synchronize(device)
    end = time.perf_counter()
    del iterator, loader
    return _rates("reference", method, steps * batch_size, end - start, start, end, losses[-1])


# ---- mimkd: the Trainer itself, timed over a window of its steps ---------------------------------


class TimedLoader:
    """Wraps the trainer's loader; notes the time (after a device sync) when batch `warmup` and
    batch `warmup + steps` are requested, i.e. around exactly `steps` trainer steps. An optional
    barrier lines up the windows of packed processes."""

    def __init__(self, loader, warmup: int, steps: int, device, barrier=None):
        self.loader = loader
        self.warmup = warmup
        self.steps = steps
        self.device = device
        self.barrier = barrier
        self.start = self.end = None

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state) -> None:
        self.loader.load_state_dict(state)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.warmup:
                synchronize(self.device)
                if self.barrier is not None:
                    self.barrier.wait()
                self.start = time.perf_counter()
            if index == self.warmup + self.steps:
                synchronize(self.device)
                self.end = time.perf_counter()
            yield batch


@dataclass
class FastFlags:
    precision: str = "auto"
    channels_last: bool = True
    compile: bool | None = None
    compile_mode: str = "default"
    fast_teacher: bool = True

    def describe(self, device: torch.device) -> str:
        precision = resolve_precision(self.precision, device)
        compiled = resolve_compile(self.compile, device)
        parts = [precision, "channels_last" if self.channels_last else "NCHW"]
        parts.append(f"compile:{self.compile_mode}" if compiled else "eager")
        parts.append("folded teacher" if self.fast_teacher else "unfolded teacher")
        return ", ".join(parts)


def mimkd_throughput(
    method: str,
    teacher_name: str,
    student_name: str,
    data: Data,
    device: torch.device,
    flags: FastFlags,
    *,
    batch_size: int = 64,
    warmup: int = 3,
    steps: int = 20,
    barrier=None,
    method_overrides: dict | None = None,
) -> dict:
    """images/s of mimkd's Trainer: DeviceLoader (uint8 on the device, batched crop+flip), the
    distiller, bf16/channels_last/compile per `flags`, the teacher folded: the run `build_run`
    assembles, with its training loader timed."""
    if len(data.labels) < (warmup + steps + 1) * batch_size:
        raise ValueError("the training set must hold warmup + steps + 1 batches (one epoch)")
    teacher, student = build_models(teacher_name, student_name, data.num_classes)
    bundle = DatasetBundle(
        name=data.name,
        num_classes=data.num_classes,
        train=ImageTensors(data.images, data.labels),
        test=ImageTensors(data.images[:256], data.labels[:256]),
        mean=data.mean,
        std=data.std,
    )
    total = warmup + steps + 1
    overrides = [f"{method}.{key}={value}" for key, value in (method_overrides or {}).items()]
    with tempfile.TemporaryDirectory() as folder:
        config, method_config = load_config(
            None,
            [
                f"method={method}",
                f"data.batch_size={batch_size}",
                "data.eval_batch_size=256",
                "data.augment=crop_flip",
                "epochs=1",
                f"max_steps={total}",
                f"log_every={total}",  # no interval report (host sync) inside the window
                "progress=false",
                f"precision={flags.precision}",
                f"channels_last={flags.channels_last}",
                f"compile={'null' if flags.compile is None else flags.compile}",
                f"compile_mode={flags.compile_mode}",
                f"fast_teacher={flags.fast_teacher}",
                "optim.lr=0.05",
                "optim.momentum=0.9",
                "optim.weight_decay=5e-4",
                f"device={device}",
                f"run_dir={Path(folder) / 'run'}",
                *overrides,
            ],
        )
        # the same assembly as every run (`build_run`); only the loader is wrapped in the timer
        parts = build_run(config, method_config, student=student, teacher=teacher, dataset=bundle)
        timed = TimedLoader(parts.train_loader, warmup, steps, device, barrier)
        parts.train_loader = timed
        trainer = Trainer(parts, log_line=lambda _: None)
        # the closing evaluation is not timed: keep it eager so it costs no second compile
        trainer.eval_model = trainer.distiller.student
        result = trainer.fit()
    loss = result.history[-1]["train_loss"] if result.history else float("nan")
    return _rates(
        "mimkd", method, steps * batch_size, timed.end - timed.start, timed.start, timed.end, loss
    )


def _rates(path, method, images, seconds, start, end, loss) -> dict:
    return {
        "path": path,
        "method": method,
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds,
        "step_ms": 1000 * seconds * 64 / images,
        "start": start,
        "end": end,
        "loss": float(loss),
    }


def packed_worker(queue, barrier, threads: int, kwargs: dict) -> None:
    """One packed run (spawned process): the mimkd path, its window lined up by the barrier."""
    torch.set_num_threads(threads)
    try:
        data = make_data(kwargs.pop("data_source"), kwargs.pop("data_size"))
        device = torch.device(kwargs.pop("device"))
        result = mimkd_throughput(data=data, device=device, barrier=barrier, **kwargs)
        queue.put(result)
    except BaseException as error:  # report instead of hanging the parent on the queue
        barrier.abort()
        queue.put({"error": f"{type(error).__name__}: {error}"})


def packed_throughput(num_runs: int, kwargs: dict) -> dict:
    """N mimkd runs in N processes on one device, timed over the same window: per-run images/s
    and the aggregate (all images over the union of the windows)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(num_runs)
    queue = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // num_runs)
    processes = [
        context.Process(target=packed_worker, args=(queue, barrier, threads, dict(kwargs)))
        for _ in range(num_runs)
    ]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"a packed run failed: {errors[0]}")
    images = sum(r["images"] for r in results)
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    per_run = [r["images_per_second"] for r in results]
    return {
        "runs": num_runs,
        "per_run_images_per_second": per_run,
        "mean_per_run": float(np.mean(per_run)),
        "aggregate_images_per_second": images / window,
    }


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (what reports and the lead's README paste)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def environment(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    load = ""
    with contextlib.suppress(OSError):
        load = ", load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"torch {torch.__version__}, {name}{load}"


def clone_flags(flags: FastFlags, **changes) -> FastFlags:
    result = copy.copy(flags)
    for key, value in changes.items():
        setattr(result, key, value)
    return result
