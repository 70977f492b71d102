"""One loader for every model file a user has: `teacher=`, `mimkd eval|export|predict|mi layers`.

What a file is comes from its content, not its name (`serialization.sniff_format`):
- a mimkd checkpoint (`format: mimkd-checkpoint-v1`): weights, architecture, classes, data config;
- a RepDistiller / mdistiller teacher (`{"model": state_dict, "epoch", "accuracy" | "best_acc",
  "optimizer"}`, `*_last.pth` also `"opt"`, an `argparse.Namespace`);
- a plain state_dict at the top level or under `model` / `state_dict` / `net`, with or without
  DataParallel's `module.` (or torch.compile's `_orig_mod.`) prefix; torchvision/timm state_dicts
  for `tv:` / `timm:` models;
- a `.safetensors` export (its metadata names the architecture).
`.onnx` and `.pt2` exports are refused here with a pointer: they run (`mimkd.deploy.runtime`) but
hold no module a teacher's layers can be read from.

The architecture comes from, in order: the caller (`teacher.model=` / `--model`), the file
(mimkd checkpoints and exports record it), or, as RepDistiller does, the file's folder
(`resnet32x4_vanilla/ckpt_epoch_240.pth` -> resnet32x4, `S:resnet8_T:...` -> resnet8). Where the
zoo's module names differ from RepDistiller's (WRN's `blockN.layer.i` and `convShortcut`,
ResNet50's `shortcut` and `linear`), keys are renamed at load time, so the zoo's tap paths stay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mimkd.errors import CheckpointError, MimkdError
from mimkd.models.registry import MODELS, create_model, is_known_model
from mimkd.serialization import (
    CHECKPOINT_FORMAT,
    check_readable_file,
    load_checkpoint,
    read_json_metadata,
    read_safetensors,
    sha256_of,
    sniff_format,
)

# RepDistiller's `model_dict` names that differ from the zoo's
REPDISTILLER_NAMES = {
    "ResNet50": "resnet50",
    "MobileNetV2": "mobilenetv2",
    "mobile_half": "mobilenetv2",
    "ShuffleV1": "shufflenetv1",
    "ShuffleV2": "shufflenetv2",
}

# RepDistiller's state_dict keys -> the zoo's, for the models whose module names differ
_WRN_RENAMES = (
    (re.compile(r"^(block\d+)\.layer\."), r"\1."),
    (re.compile(r"\.convShortcut\."), ".shortcut."),
)
_RESNET50_RENAMES = (
    (re.compile(r"\.shortcut\."), ".downsample."),
    (re.compile(r"^linear\."), "fc."),
)

# wrappers that prefix every key: DataParallel/DDP, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# where checkpoint dicts keep their state_dict, in the order they are looked for
_STATE_KEYS = ("model", "state_dict", "net")

# what a mimkd checkpoint holds for training only (never metadata of the model)
_TRAINING_STATE = ("model", "distiller", "optimizer", "scheduler", "scaler", "rng", "loader")


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    num_classes: int
    sha256: str | None = None
    accuracy: float | None = None
    source: str = ""
    # mimkd-checkpoint | repdistiller | state_dict | safetensors | weights
    format: str = ""
    in_channels: int | None = None
    # what the file records beside the weights (a mimkd checkpoint's config, an export's card)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelFile:
    """What a weights file holds, before any model is built."""

    state: dict[str, torch.Tensor]
    format: str
    architecture: str | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    accuracy: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def load_model(
    path: str | None,
    *,
    model_name: str | None,
    num_classes: int | None,
    in_channels: int | None,
    image_size: int | None = None,
    weights: str | None = None,
    what: str = "teacher checkpoint",
    architecture_option: str = "teacher.model=NAME",
) -> LoadedModel:
    """Build a model and fill it from `path`.

    `num_classes` / `in_channels` are what the data needs (None: whatever the file holds);
    `what` and `architecture_option` name the file and the setting in error messages.
    """
    if path is None:
        if not model_name or not weights:
            raise MimkdError(
                "a teacher needs teacher.checkpoint=PATH (or teacher.model=tv:NAME with "
                "teacher.weights=DEFAULT when online)."
            )
        model = create_model(
            model_name,
            num_classes=num_classes or 1000,
            in_channels=in_channels or 3,
            weights=weights,
        )
        return LoadedModel(
            model,
            model_name,
            _guess_classes(model.state_dict()) or num_classes or 0,
            source=f"{model_name} weights {weights}",
            format="weights",
            in_channels=in_channels,
        )

    file = check_readable_file(
        path, what, "train one with `mimkd train` or fix the path (teacher.checkpoint=...)"
    )
    contents = read_model_file(file)
    architecture = _choose_architecture(file, contents, model_name, architecture_option)
    if num_classes and contents.num_classes and contents.num_classes != num_classes:
        raise _class_mismatch(file, contents.num_classes, num_classes)
    if in_channels and contents.in_channels and contents.in_channels != in_channels:
        raise _channel_mismatch(file, contents.in_channels, in_channels)
    state = strip_wrapper_prefixes(contents.state)
    classes = num_classes or contents.num_classes or _guess_classes(state)
    if not classes:
        raise CheckpointError(f"{file} has no classifier weights mimkd can recognise.")
    channels = in_channels or contents.in_channels or _guess_in_channels(state) or 3
    model = create_model(architecture, num_classes=classes, in_channels=channels)
    try:
        fitted = fit_state_dict(state, model, architecture, file)
    except CheckpointError:
        # say the likely cause (a model for other data) before the key-level detail
        file_classes, file_channels = _guess_classes(state), _guess_in_channels(state)
        if num_classes and file_classes and file_classes != num_classes:
            raise _class_mismatch(file, file_classes, num_classes) from None
        if in_channels and file_channels and file_channels != in_channels:
            raise _channel_mismatch(file, file_channels, in_channels) from None
        raise
    model.load_state_dict(fitted)
    return LoadedModel(
        model=model,
        name=architecture,
        num_classes=classes,
        sha256=sha256_of(file),
        accuracy=contents.accuracy,
        source=str(file),
        format=contents.format,
        in_channels=channels,
        metadata=contents.metadata,
    )


def read_model_file(path: str | Path) -> ModelFile:
    """Read the weights and what the file says about them (architecture, classes, accuracy)."""
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return _safetensors_file(path)
    if kind in ("onnx", "pt2"):
        label = "an ONNX" if kind == "onnx" else "a torch.export (.pt2)"
        raise CheckpointError(
            f"{path} is {label} export: `mimkd eval` and `mimkd predict` run it, but this needs the "
            "weights; pass the checkpoint it was exported from or its .safetensors export."
        )
    if kind == "unknown":
        raise CheckpointError(
            f"{str(path)!r} is corrupt or not a model file mimkd reads (a checkpoint or state_dict "
            ".pt/.pth, .safetensors, .onnx or .pt2); pass one of those or copy the file again."
        )
    record = load_checkpoint(path)
    if isinstance(record, dict) and record.get("format") == CHECKPOINT_FORMAT:
        return _mimkd_checkpoint(record)
    if _is_state_dict(record):
        return ModelFile(record, "state_dict")
    if isinstance(record, dict):
        for key in _STATE_KEYS:
            if _is_state_dict(record.get(key)):
                return _wrapped_state_dict(record, key)
    raise CheckpointError(
        f"{path} holds no model weights mimkd recognises (a mimkd checkpoint, a RepDistiller "
        "teacher, or a state_dict at the top level or under 'model', 'state_dict' or 'net')."
    )


def _mimkd_checkpoint(record: dict) -> ModelFile:
    metadata = {key: value for key, value in record.items() if key not in _TRAINING_STATE}
    return ModelFile(
        state=record["model"],
        format="mimkd-checkpoint",
        architecture=record.get("model_name"),
        num_classes=record.get("num_classes"),
        in_channels=record.get("in_channels"),
        accuracy=record.get("best_accuracy"),
        metadata=metadata,
    )


def _wrapped_state_dict(record: dict, key: str) -> ModelFile:
    # RepDistiller's train_teacher.py: {"epoch", "model", "accuracy" | "best_acc", "optimizer"},
    # and in *_last.pth "opt", the run's argparse.Namespace (which names the model)
    is_repdistiller = key == "model" and bool({"accuracy", "best_acc", "opt"} & record.keys())
    options = vars(record["opt"]) if hasattr(record.get("opt"), "__dict__") else {}
    plain_options = {name: value for name, value in options.items() if _is_plain(value)}
    architecture = plain_options.get("model")
    return ModelFile(
        state=record[key],
        format="repdistiller" if is_repdistiller else "state_dict",
        architecture=architecture if isinstance(architecture, str) else None,
        accuracy=_as_fraction(record.get("accuracy", record.get("best_acc"))),
        metadata={"epoch": _plain_number(record.get("epoch")), "opt": plain_options},
    )


def _safetensors_file(path: Path) -> ModelFile:
    state, strings = read_safetensors(path)
    card = read_json_metadata(strings)
    shape = card.get("input_shape") or _parse_shape(strings.get("image_shape", ""))
    classes = card.get("num_classes") or strings.get("num_classes")
    return ModelFile(
        state=state,
        format="safetensors",
        architecture=card.get("architecture") or strings.get("model_name") or None,
        num_classes=int(classes) if classes else None,
        in_channels=int(shape[0]) if shape else None,
        accuracy=card.get("accuracy"),
        metadata=card,
    )


def _choose_architecture(
    path: Path, contents: ModelFile, requested: str | None, option: str
) -> str:
    recorded = contents.architecture
    if contents.format == "mimkd-checkpoint" and requested and recorded and requested != recorded:
        raise CheckpointError(
            f"{path} holds a {recorded!r}, not {requested!r}; drop {option.split('=')[0]} or fix it."
        )
    name = requested or recorded or architecture_from_folder(path)
    if not name:
        raise CheckpointError(
            f"{path} does not say which architecture it holds (nor does its folder name "
            f"{path.parent.name!r}); pass {option} (e.g. resnet32x4; `mimkd list models` lists them)."
        )
    return canonical_model_name(name)


def canonical_model_name(name: str) -> str:
    """The zoo's name for `name`, accepting RepDistiller's spellings (`ResNet50`, `ShuffleV1`)."""
    if is_known_model(name):
        return name
    by_lower = {key.lower(): value for key, value in REPDISTILLER_NAMES.items()}
    by_lower.update({zoo.lower(): zoo for zoo in MODELS.names()})
    return by_lower.get(name.lower(), name)  # unknown names fail in create_model, with a hint


def architecture_from_folder(path: str | Path) -> str | None:
    """RepDistiller's convention: `<model>_vanilla/...` (teachers), `S:<model>_T:.../` (students)."""
    folder = Path(path).parent.name
    folder = folder[2:] if folder.startswith("S:") else folder
    lowered = folder.lower()
    candidates = {zoo.lower(): zoo for zoo in MODELS.names()}
    candidates.update({key.lower(): value for key, value in REPDISTILLER_NAMES.items()})
    # the longest match wins: resnet32x4_vanilla is resnet32x4, not resnet32
    matches = [
        name
        for name in candidates
        if lowered == name or lowered.startswith(name + "_") or lowered.startswith(name + "-")
    ]
    return candidates[max(matches, key=len)] if matches else None


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's `module.` / torch.compile's `_orig_mod.` when every key carries it."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix) :]: value for key, value in state.items()}
                changed = True
    return state


def repdistiller_renames(architecture: str) -> tuple[tuple[re.Pattern, str], ...]:
    if architecture.startswith("wrn_"):
        return _WRN_RENAMES
    if architecture == "resnet50":
        return _RESNET50_RENAMES
    return ()


def fit_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, architecture: str, path: Path
) -> dict[str, torch.Tensor]:
    """`state` with the model's key names (RepDistiller's renamed), or a one-line error."""
    expected = model.state_dict()
    if state.keys() != expected.keys():
        renamed = dict(state)
        for pattern, replacement in repdistiller_renames(architecture):
            renamed = {pattern.sub(replacement, key): value for key, value in renamed.items()}
        if renamed.keys() == expected.keys():
            state = renamed
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if state.keys() == expected.keys() and not mismatched:
        return state
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if mismatched:
        detail = f"mismatched: {', '.join(mismatched[:3])}"
    else:
        detail = f"missing {', '.join(missing[:2]) or '-'}; unexpected {', '.join(unexpected[:2]) or '-'}"
    raise CheckpointError(
        f"{path} does not fit {architecture!r} ({detail}); check the architecture name."
    )


def _class_mismatch(path: Path, file_classes: int, data_classes: int) -> CheckpointError:
    return CheckpointError(
        f"{path} predicts {file_classes} classes but the dataset has {data_classes}; "
        "use a model trained on this dataset."
    )


def _channel_mismatch(path: Path, file_channels: int, data_channels: int) -> CheckpointError:
    return CheckpointError(
        f"{path} reads {file_channels}-channel images but the data has {data_channels}; "
        f"set data.channels={file_channels} or use a model trained on this data."
    )


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) > 0
        and all(isinstance(key, str) and isinstance(v, torch.Tensor) for key, v in value.items())
    )


def _guess_classes(state: dict) -> int | None:
    """The classifier's output size: the last 2-D weight of the state_dict."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def _guess_in_channels(state: dict) -> int | None:
    """The stem's input channels: the first 4-D (convolution) weight's second dimension."""
    for key, value in state.items():
        if key.endswith("weight") and value.dim() == 4:
            return int(value.shape[1])
    return None


def _as_fraction(accuracy: Any) -> float | None:
    """RepDistiller records accuracy in percent (often as a 0-d tensor); mimkd in [0, 1]."""
    value = _plain_number(accuracy)
    if value is None:
        return None
    return value / 100 if value > 1 else value


def _plain_number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def _is_plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(_is_plain(v) for v in value)


def _parse_shape(text: str) -> list[int] | None:
    parts = text.split("x")
    return [int(p) for p in parts] if len(parts) == 3 and all(p.isdigit() for p in parts) else None
