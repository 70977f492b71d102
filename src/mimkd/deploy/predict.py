"""`mimkd predict`: ask a model about picture files, preprocessed as its evaluation was."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mimkd.deploy.preprocess import load_images
from mimkd.deploy.runtime import Runner, open_model

# images per forward: bounded memory for long file lists
CHUNK = 256


@dataclass
class ClassScore:
    index: int
    name: str | None
    probability: float


@dataclass
class Prediction:
    image: str
    top: list[ClassScore]


def predict_files(
    model_path: str | Path,
    images: Sequence[str | Path],
    *,
    top: int = 5,
    model_name: str | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Runner, list[Prediction]]:
    """The `top` most probable classes for each image file."""
    runner = open_model(model_path, model_name=model_name, overrides=overrides)
    predictions = []
    for start in range(0, len(images), CHUNK):
        chunk = list(images[start : start + CHUNK])
        probabilities = torch.softmax(runner(load_images(chunk, runner.card)).float(), dim=1)
        predictions += rank(chunk, probabilities, top, runner)
    return runner, predictions


def rank(
    images: Sequence[str | Path], probabilities: torch.Tensor, top: int, runner: Runner
) -> list[Prediction]:
    values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
    return [
        Prediction(
            str(image),
            [
                ClassScore(int(index), runner.card.label(int(index)), float(value))
                for value, index in zip(row_values, row_indices)
            ],
        )
        for image, row_values, row_indices in zip(images, values, indices)
    ]
