"""`mimkd eval`: a checkpoint's accuracy on a dataset (by default the one it was trained on)."""

from __future__ import annotations

import contextlib

from mimkd.config import DataConfig
from mimkd.data import load_dataset, make_loader
from mimkd.engine.build import select_device
from mimkd.engine.trainer import evaluate
from mimkd.errors import CheckpointError, ConfigError, did_you_mean
from mimkd.models.loading import load_model
from mimkd.serialization import load_checkpoint


def evaluate_checkpoint(
    path: str, overrides: list[str] | None = None, device: str = "auto"
) -> dict:
    record = load_checkpoint(path)
    if not isinstance(record, dict) or "config" not in record:
        raise CheckpointError(
            f"{path} is not a mimkd checkpoint; `mimkd eval` needs one written by `mimkd train`/`distill`."
        )
    data = DataConfig(**record["config"]["data"])
    valid = [f"data.{f}" for f in DataConfig.__dataclass_fields__]
    for text in overrides or []:
        key, _, value = text.partition("=")
        field = key.removeprefix("data.")
        if key not in valid or not value:
            raise ConfigError(
                f"unknown eval override {text!r}.{did_you_mean(key, valid)} `mimkd eval` takes data.* keys."
            )
        current = getattr(data, field)
        setattr(
            data,
            field,
            type(current)(value)
            if current is not None and not isinstance(current, bool)
            else value,
        )
    dataset = load_dataset(
        data.name,
        root=data.root,
        download=data.download,
        image_size=data.image_size,
        channels=data.channels,
        test_subset=data.test_subset,
    )
    channels, height, _ = dataset.image_shape
    loaded = load_model(
        path,
        model_name=record["model_name"],
        num_classes=dataset.num_classes,
        in_channels=channels,
        image_size=height,
    )
    target = select_device(device)
    loader = make_loader(
        dataset.test,
        data.eval_batch_size,
        mean=dataset.mean,
        std=dataset.std,
        device=target,
        train=False,
        num_workers=data.num_workers,
    )
    result = evaluate(loaded.model.to(target), loader, contextlib.nullcontext)
    result.update(
        {
            "dataset": dataset.name,
            "checkpoint": str(path),
            "sha256": loaded.sha256,
            "model": loaded.name,
        }
    )
    return result
