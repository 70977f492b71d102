"""MI between teacher and student representations, layer by layer (`mimkd mi layers`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mimkd.errors import DataError, ShapeError
from mimkd.estimate.core import estimate_mi
from mimkd.features import FeatureExtractor, TapSet, as_locations, discover_taps, flatten_vector


@dataclass
class LayerMIRow:
    """One row of the layer table: which taps were paired and the MI between their features."""

    teacher_layer: str
    student_layer: str
    teacher_dim: int
    student_dim: int
    mi_nats: float
    ci_low: float
    ci_high: float
    estimator: str
    n: int


def pair_by_depth(teacher_stages: Sequence[str], student_stages: Sequence[str]) -> list[tuple]:
    """Pair each student stage with the teacher stage at the nearest relative depth (k+1)/n.

    Depth is relative so a 3-stage student pairs with a 4-stage teacher end to end; ties go to
    the deeper teacher stage.
    """
    pairs = []
    for k, student_stage in enumerate(student_stages):
        depth = (k + 1) / len(student_stages)
        distances = [abs((j + 1) / len(teacher_stages) - depth) for j in range(len(teacher_stages))]
        best = min(range(len(teacher_stages)), key=lambda j: (round(distances[j], 9), -j))
        pairs.append((teacher_stages[best], student_stage))
    return pairs


@torch.no_grad()
def collect_features(
    model: nn.Module,
    paths: Sequence[str],
    batches: Iterable[Any] | torch.Tensor,
    *,
    max_samples: int = 4096,
    device: str | torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Globally pooled features [N, C] per tap over up to `max_samples` images (eval mode)."""
    extractor = FeatureExtractor(model, paths)
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {path: [] for path in paths}
    seen = 0
    try:
        for images in _image_batches(batches):
            if seen >= max_samples:
                break
            images = images[: max_samples - seen]
            if device is not None:
                images = images.to(device)
            _, features = extractor(images)
            for path, tensor in features.items():
                collected[path].append(_pool(tensor).float().cpu())
            seen += images.shape[0]
    finally:
        extractor.remove()
        model.train(was_training)
    if seen == 0:
        raise DataError("no images reached the models; the loader or tensor was empty.")
    return {path: torch.cat(chunks) for path, chunks in collected.items()}


def _pool(tensor: torch.Tensor) -> torch.Tensor:
    """Vectors stay; maps and token sequences are averaged over their locations."""
    if tensor.dim() in (3, 4):
        return as_locations(tensor).mean(1)
    return flatten_vector(tensor)


def _image_batches(batches: Iterable[Any] | torch.Tensor, chunk: int = 256):
    if torch.is_tensor(batches):
        yield from batches.split(chunk)
        return
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = batch.get("images", batch.get("image"))
        if not torch.is_tensor(batch):
            raise DataError(
                "layer MI expects batches of image tensors or (images, labels, ...) tuples; got "
                f"{type(batch).__name__}."
            )
        yield batch


def default_layer_pairs(teacher_taps: TapSet, student_taps: TapSet) -> list[tuple[str, str]]:
    """Stages paired by relative depth, then the penultimate vectors."""
    teacher_stages = teacher_taps.stages or [teacher_taps.last_map]
    student_stages = student_taps.stages or [student_taps.last_map]
    pairs = pair_by_depth(teacher_stages, student_stages)
    return [*pairs, (teacher_taps.penultimate, student_taps.penultimate)]


def layer_mi(
    teacher: nn.Module,
    student: nn.Module,
    batches: Iterable[Any] | torch.Tensor,
    *,
    estimator: str = "auto",
    pairs: Sequence[tuple[str, str]] | None = None,
    max_samples: int = 4096,
    device: str | torch.device | None = None,
    progress: bool = True,
    **estimate_kwargs: Any,
) -> list[LayerMIRow]:
    """MI between teacher and student representations, layer by layer.

    `batches`: an image tensor [N, C, H, W], or an iterable (e.g. a DataLoader) of image tensors or
    (images, labels, ...) tuples; the first `max_samples` images are used. `pairs` lists
    (teacher_tap, student_tap); the default pairs stages by relative depth (global average pooled
    maps) and then the penultimate vectors. Each pair gets its own fresh critic via `estimate_mi`
    (`estimate_kwargs` pass through: steps, hidden, seed, ...).
    """
    first = next(iter(_image_batches(batches)), None)
    if first is None:
        raise DataError("no images reached the models; the loader or tensor was empty.")
    sample = first[:2].to(device) if device is not None else first[:2]
    if pairs is None:
        pairs = default_layer_pairs(discover_taps(teacher, sample), discover_taps(student, sample))
    teacher_paths = list(dict.fromkeys(teacher_path for teacher_path, _ in pairs))
    student_paths = list(dict.fromkeys(student_path for _, student_path in pairs))
    teacher_features = collect_features(
        teacher, teacher_paths, batches, max_samples=max_samples, device=device
    )
    student_features = collect_features(
        student, student_paths, batches, max_samples=max_samples, device=device
    )
    rows = []
    for teacher_path, student_path in pairs:
        x, y = teacher_features[teacher_path], student_features[student_path]
        if x.shape[0] != y.shape[0]:
            raise ShapeError(
                "the teacher and student saw different numbers of images; pass a tensor or a "
                "loader that yields the same images on every pass (shuffle=False)."
            )
        result = estimate_mi(x, y, estimator, device=device, progress=progress, **estimate_kwargs)
        rows.append(
            LayerMIRow(
                teacher_layer=teacher_path,
                student_layer=student_path,
                teacher_dim=x.shape[1],
                student_dim=y.shape[1],
                mi_nats=result.mi_nats,
                ci_low=result.ci_low,
                ci_high=result.ci_high,
                estimator=result.estimator,
                n=result.n,
            )
        )
    return rows


def format_layer_table(rows: Sequence[LayerMIRow]) -> str:
    """The rows of `layer_mi` as an aligned text table (what `mimkd mi layers` prints)."""
    header = ("teacher layer", "student layer", "dims (T, S)", "MI (nats)", "CI")
    body = [
        (
            row.teacher_layer,
            row.student_layer,
            f"{row.teacher_dim}, {row.student_dim}",
            f"{row.mi_nats:.3f}",
            f"[{row.ci_low:.3f}, {row.ci_high:.3f}]",
        )
        for row in rows
    ]
    widths = [max(len(line[k]) for line in [header, *body]) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in body]
    title = "  ".join(cell.ljust(width) for cell, width in zip(header, widths))
    return "\n".join([title, "-" * len(title), *lines])


__all__ = [
    "LayerMIRow",
    "collect_features",
    "default_layer_pairs",
    "format_layer_table",
    "layer_mi",
    "pair_by_depth",
]
