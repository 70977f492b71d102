"""The Python API: everything the CLI does, from Python objects.

Example: `mimkd.distill(student, teacher, method="kd", overrides={"epochs": 3})`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mimkd.config import load_config
from mimkd.data import DatasetBundle, load_dataset
from mimkd.engine.run import run


def _overrides(values: dict[str, Any] | list[str] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, dict):
        return [f"{key}={'null' if value is None else value}" for key, value in values.items()]
    return list(values)


def distill(
    student: nn.Module | str,
    teacher: nn.Module | str | None,
    *,
    method: str = "kd",
    dataset: str | DatasetBundle = "fashion_mnist",
    config: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> dict:
    """Distil `teacher` into `student` and return the run's results (also written to its folder).

    `student`/`teacher` are modules or names (`create_model` names; a teacher name is a checkpoint
    path). `dataset` is a registered name or a `DatasetBundle` you loaded or built yourself.
    """
    extra = [f"method={method}"]
    if isinstance(student, str):
        extra.append(f"model.name={student}")
        student = None
    if isinstance(teacher, str):
        extra.append(f"teacher.checkpoint={teacher}")
        teacher = None
    bundle = None
    if isinstance(dataset, str):
        extra.append(f"data.name={dataset}")
    else:
        bundle = dataset
    run_config, method_config = load_config(config, [*extra, *_overrides(overrides)])
    if student is not None and isinstance(student, nn.Module):
        run_config.model.name = type(student).__name__
    return run(run_config, method_config, student=student, teacher=teacher, dataset=bundle)


def train(
    model: nn.Module | str,
    *,
    dataset: str | DatasetBundle = "fashion_mnist",
    config: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> dict:
    """Train a model from scratch with cross-entropy (e.g. a teacher)."""
    return distill(model, None, method="ce", dataset=dataset, config=config, overrides=overrides)


__all__ = ["distill", "load_dataset", "train"]
