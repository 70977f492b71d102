"""A run from a config, end to end: `Trainer(build_run(config)).fit()`.

The library entry point behind `mimkd train` and `mimkd distill`; the Python API, packing and the
quickstart call it too. Returns results.json's content.
"""

from __future__ import annotations

from typing import Any

import torch

from mimkd.config import RunConfig, load_config
from mimkd.data import DatasetBundle
from mimkd.engine.build import build_run
from mimkd.engine.trainer import Trainer


def run(
    config: RunConfig,
    method_config: Any = None,
    *,
    student: torch.nn.Module | None = None,
    teacher: torch.nn.Module | None = None,
    dataset: DatasetBundle | None = None,
) -> dict:
    """Train (method ce) or distil, write the run folder, return results.json's content."""
    parts = build_run(config, method_config, student=student, teacher=teacher, dataset=dataset)
    return Trainer(parts).fit().results


def run_from_args(config_file: str | None, overrides: list[str], base: dict | None = None) -> dict:
    config, method_config = load_config(config_file, overrides, base)
    return run(config, method_config)
