"""`mimkd eval MODEL`: any model file's accuracy on its test set (checkpoint or export alike)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mimkd.deploy.runtime import open_model
from mimkd.engine.build import select_device
from mimkd.engine.evaluate import evaluate_on_test_set, load_test_set
from mimkd.errors import CheckpointError


def evaluate_file(
    path: str | Path,
    overrides: Sequence[str] = (),
    *,
    model_name: str | None = None,
    device: str = "auto",
) -> dict:
    runner = open_model(path, model_name=model_name, overrides=overrides)
    bundle = load_test_set(runner.data)
    if tuple(bundle.image_shape) != tuple(runner.card.input_shape):
        raise CheckpointError(
            f"{path} reads {'x'.join(map(str, runner.card.input_shape))} images but "
            f"{bundle.name} gives {'x'.join(map(str, bundle.image_shape))}; set data.image_size "
            "and data.channels as in training."
        )
    if bundle.num_classes != runner.card.num_classes:
        raise CheckpointError(
            f"{path} predicts {runner.card.num_classes} classes but {bundle.name} has "
            f"{bundle.num_classes}; evaluate it on the dataset it was trained on."
        )
    # onnxruntime and ExportedPrograms run on the CPU here; PyTorch models where asked
    target = select_device(device) if runner.module is not None else torch.device("cpu")
    result = evaluate_on_test_set(runner.as_module(), bundle, runner.data, target)
    result.update(
        {
            "dataset": bundle.name,
            "checkpoint": str(path),
            "format": runner.format,
            "sha256": runner.sha256,
            "model": runner.card.architecture,
        }
    )
    return result
