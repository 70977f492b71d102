"""`mimkd eval`'s engine half: which test set a model is evaluated on, and the metrics over it.

The data settings come from the model file (the run's own `data` config) with `data.*` overrides
parsed by the same typed config as every other command (`mimkd.config.load_config`), so
`data.test_subset=abc` is a one-line error and `data.download=false` is False. The metrics are
the trainer's own `evaluate`, so a checkpoint and each of its exports report the same numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from mimkd.config import DataConfig, load_config
from mimkd.data import DatasetBundle, load_dataset, make_loader
from mimkd.engine.metrics import evaluate
from mimkd.errors import ConfigError, did_you_mean

DATA_FIELDS = tuple(field.name for field in dataclasses.fields(DataConfig))


def eval_data_config(
    recorded: dict | None, overrides: list[str] | None = None, default_name: str | None = None
) -> DataConfig:
    """The recorded data config (or `data.name=default_name`) with `data.*` overrides applied."""
    overrides = list(overrides or [])
    for text in overrides:
        key = text.partition("=")[0].strip().lstrip("-")
        if key != "dataset" and not key.startswith("data."):
            valid = [f"data.{name}" for name in DATA_FIELDS]
            raise ConfigError(
                f"`mimkd eval` takes data.* overrides, not {text!r}.{did_you_mean(key, valid)}"
            )
    base = {key: value for key, value in (recorded or {}).items() if key in DATA_FIELDS}
    if not base.get("name") and default_name:
        base["name"] = default_name
    named = "name" in base or any(text.startswith(("data.name=", "dataset=")) for text in overrides)
    if not named:
        raise ConfigError(
            "this model file records no dataset; pass data.name=NAME (`mimkd list datasets`) "
            "and data.root=PATH where its files are."
        )
    run_config, _ = load_config(None, overrides=overrides, base={"data": base})
    return run_config.data


def load_test_set(data: DataConfig) -> DatasetBundle:
    return load_dataset(
        data.name,
        root=data.root,
        download=data.download,
        image_size=data.image_size,
        channels=data.channels,
        test_subset=data.test_subset,
    )


def evaluate_on_test_set(
    model: nn.Module, bundle: DatasetBundle, data: DataConfig, device: torch.device
) -> dict:
    """Top-1/top-5/loss of `model` on the bundle's test split, normalised as in training."""
    loader = make_loader(
        bundle.test,
        data.eval_batch_size,
        mean=bundle.mean,
        std=bundle.std,
        device=device,
        train=False,
        num_workers=data.num_workers,
    )
    return evaluate(model.to(device), loader, contextlib.nullcontext)
