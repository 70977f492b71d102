"""Load a trained model: mimkd checkpoints, plain state_dicts (.pt/.pth/.safetensors), tv weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mimkd.errors import CheckpointError, MimkdError
from mimkd.models.registry import create_model
from mimkd.serialization import CHECKPOINT_FORMAT, load_checkpoint, sha256_of


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    num_classes: int
    sha256: str | None = None
    accuracy: float | None = None
    source: str = ""


def _output_classes(model: nn.Module, in_channels: int, image_size: int) -> int:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, in_channels, image_size, image_size))
    model.train(was_training)
    return int(logits.shape[-1])


def load_model(
    path: str | None,
    *,
    model_name: str | None,
    num_classes: int,
    in_channels: int,
    image_size: int,
    weights: str | None = None,
) -> LoadedModel:
    """Build a model and fill it from `path`; the result must predict `num_classes` classes."""

    if path is None:
        if not model_name or not weights:
            raise MimkdError(
                "a teacher needs teacher.checkpoint=PATH (or teacher.model=tv:NAME with teacher.weights=DEFAULT when online)."
            )
        model = create_model(
            model_name, num_classes=num_classes, in_channels=in_channels, weights=weights
        )
        return LoadedModel(model, model_name, num_classes, source=f"{model_name} weights {weights}")

    file = Path(path)
    if not file.is_file():
        raise CheckpointError(
            f"teacher checkpoint {path!r} does not exist; train one with `mimkd train` or fix teacher.checkpoint."
        )
    accuracy = None
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"teacher file {path!r} is corrupt ({error}); re-export it."
            ) from None
    else:
        record = load_checkpoint(file)
        if isinstance(record, dict) and record.get("format") == CHECKPOINT_FORMAT:
            model_name = model_name or record["model_name"]
            if record["model_name"] != model_name:
                raise CheckpointError(
                    f"{path} holds a {record['model_name']!r}, not {model_name!r}; drop teacher.model or fix it."
                )
            if record["num_classes"] != num_classes:
                raise CheckpointError(
                    f"teacher {path} predicts {record['num_classes']} classes but the dataset has {num_classes}; "
                    "use a teacher trained on this dataset."
                )
            in_channels = record.get("in_channels", in_channels)
            accuracy = record.get("best_accuracy")
            state = record["model"]
        elif isinstance(record, dict) and all(isinstance(v, torch.Tensor) for v in record.values()):
            state = record
        else:
            raise CheckpointError(
                f"{path} is neither a mimkd checkpoint nor a state_dict; pass one of those."
            )
    if not model_name:
        raise CheckpointError(
            f"{path} is a plain state_dict: say which architecture it is with teacher.model=NAME."
        )
    model = create_model(model_name, num_classes=num_classes, in_channels=in_channels)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        mismatch = [
            f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
            for key, value in model.state_dict().items()
            if key in state and state[key].shape != value.shape
        ]
        detail = (
            f"mismatched: {', '.join(mismatch[:3])}" if mismatch else str(error).splitlines()[0]
        )
        classes = _guess_classes(state)
        if classes is not None and classes != num_classes:
            raise CheckpointError(
                f"teacher {path} predicts {classes} classes but the dataset has {num_classes}; "
                "use a teacher trained on this dataset."
            ) from None
        raise CheckpointError(
            f"teacher {path} does not fit {model_name!r} ({detail}); check teacher.model."
        ) from None
    return LoadedModel(model, model_name, num_classes, sha256_of(file), accuracy, str(file))


def _guess_classes(state: dict) -> int | None:
    """The classifier's output size: the last 2-D weight of the state_dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None
