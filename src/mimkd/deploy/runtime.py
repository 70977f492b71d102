"""Run any model file: a checkpoint or weights (PyTorch), an ONNX export (onnxruntime), a `.pt2`.

`open_model(path)` returns a `Runner`: normalised float images in, logits out, with the file's
`ModelCard` (what the model reads and how a picture becomes that) and the data config its test set
is rebuilt from. `mimkd eval` and `mimkd predict` use it, so every format goes through the same
preprocessing and the same metrics. Opening never runs code from the file: weights load through
`mimkd.models.loading` (weights_only), ONNX is a graph of operators, and a `.pt2` archive is
refused when it holds pickled objects or compiled code, and loaded with torch's weights-only
unpickler forced for every tensor inside it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mimkd.config import DataConfig
from mimkd.deploy.card import CARD_FILE, CARD_KEY, ModelCard, card_for_checkpoint
from mimkd.engine.evaluate import eval_data_config
from mimkd.errors import CheckpointError, MimkdError
from mimkd.models.loading import LoadedModel, load_model
from mimkd.serialization import (
    check_readable_file,
    pickled_objects_error,
    sha256_of,
    sniff_format,
)

# RepDistiller's teachers are all CIFAR-100 models: their files name no dataset
REPDISTILLER_DATASET = "cifar100"


@dataclass
class Runner:
    """A model file ready to run on CPU tensors (`forward`), with what it was trained on."""

    path: Path
    format: str  # mimkd-checkpoint | repdistiller | state_dict | safetensors | onnx | pt2
    card: ModelCard
    data: DataConfig
    forward: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module | None = None  # the PyTorch model, for formats that have one
    sha256: str = ""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(images)

    def as_module(self) -> nn.Module:
        """An nn.Module view, for code that evaluates modules (the trainer's `evaluate`)."""
        return self.module if self.module is not None else _ForwardModule(self.forward)


class _ForwardModule(nn.Module):
    """Wraps a non-PyTorch forward (onnxruntime, an ExportedProgram) as a parameterless module:
    `eval()`/`train()` are no-ops for it, and inputs come back to the CPU the runtime uses."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self._run = forward

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run(images.cpu()).to(images.device)


def open_model(
    path: str | Path, *, model_name: str | None = None, overrides: Sequence[str] = ()
) -> Runner:
    """Open any model file mimkd writes or reads; `overrides` are `data.*` settings."""
    file = check_readable_file(path, "model file", "check the path")
    kind = sniff_format(file)
    if kind == "onnx":
        return _open_onnx(file, overrides)
    if kind == "pt2":
        return _open_exported_program(file, overrides)
    loaded, data, card = load_weights_file(file, model_name, overrides)
    model = loaded.model.eval()
    return Runner(file, loaded.format, card, data, model, model, loaded.sha256 or "")


def load_weights_file(
    file: Path, model_name: str | None, overrides: Sequence[str]
) -> tuple[LoadedModel, DataConfig, ModelCard]:
    """A weights file (checkpoint, state_dict, safetensors) through the one loader, with the data
    config it was evaluated on (its own, `data.*` overrides applied) and its card."""
    loaded = load_model(
        str(file),
        model_name=model_name,
        num_classes=None,
        in_channels=None,
        what="model file",
        architecture_option="--model NAME",
    )
    data = eval_data_config(recorded_data(loaded), list(overrides), default_dataset(loaded))
    return loaded, data, card_for_checkpoint(loaded, data)


def recorded_data(loaded: LoadedModel) -> dict | None:
    """The data config a weights file records: a mimkd run's, or an export card's."""
    if loaded.format == "mimkd-checkpoint":
        return (loaded.metadata.get("config") or {}).get("data")
    if loaded.format == "safetensors":
        return loaded.metadata.get("data") or None
    return None


def default_dataset(loaded: LoadedModel) -> str | None:
    if loaded.format == "repdistiller" and loaded.num_classes == 100:
        return REPDISTILLER_DATASET
    return None


def _require_card(file: Path, card: ModelCard | None, kind: str) -> ModelCard:
    if card is None:
        raise CheckpointError(
            f"{file} is {kind} file without mimkd's metadata (classes, input size, mean/std); "
            "export it with `mimkd export`, or pass the checkpoint."
        )
    return card


def _open_onnx(file: Path, overrides: Sequence[str]) -> Runner:
    session = onnx_session(file)
    metadata = session.get_modelmeta().custom_metadata_map
    card = _require_card(file, ModelCard.from_json(metadata.get(CARD_KEY)), "an ONNX")
    input_name = session.get_inputs()[0].name

    def forward(images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {input_name: array})[0])

    data = eval_data_config(card.data, list(overrides))
    return Runner(file, "onnx", card, data, forward, sha256=sha256_of(file))


def onnx_session(file: str | Path, threads: int = 0):
    """An onnxruntime CPU session, or a one-line error for a file it cannot read."""
    try:
        import onnxruntime
    except ImportError:
        raise MimkdError(
            'running ONNX files needs onnxruntime: pip install "mimkd[export]".'
        ) from None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's
    try:
        return onnxruntime.InferenceSession(
            str(file), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        first = str(error).strip().splitlines()[0][:100] if str(error).strip() else ""
        raise CheckpointError(
            f"{str(file)!r} is not a valid ONNX model ({first or type(error).__name__}); "
            "export it again."
        ) from None


# archive members that would run code when torch.export.load reads them
_CODE_MEMBERS = ("data/aotinductor/",)
_PICKLED_CONSTANTS = ("custom_obj_", "opaque_obj_")


def load_exported_program(file: Path) -> tuple[torch.export.ExportedProgram, ModelCard | None]:
    """torch.export.load without ever unpickling code; the card from the archive's extra file."""
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(
            f"{str(file)!r} is a corrupt .pt2 archive; export it again."
        ) from None
    for member in members:
        inner = member.split("/", 1)[-1]
        basename = inner.rsplit("/", 1)[-1]
        if inner.startswith(_CODE_MEMBERS) or (
            inner.startswith("data/constants/") and basename.startswith(_PICKLED_CONSTANTS)
        ):
            raise CheckpointError(
                f"{str(file)!r} holds compiled code or pickled objects ({inner}), which mimkd "
                "never loads; export the model again with `mimkd export --format pt2`."
            )
    extra = {CARD_FILE: ""}
    try:
        with _weights_only_everywhere():
            program = torch.export.load(str(file), extra_files=extra)
    except Exception as error:  # torch raises many types for damaged archives
        if isinstance(error, pickle.UnpicklingError):
            raise pickled_objects_error(file, error) from None
        raise CheckpointError(
            f"{str(file)!r} is a corrupt or unsupported .pt2 archive ({type(error).__name__}); "
            "export it again."
        ) from None
    return program, ModelCard.from_json(extra.get(CARD_FILE))


@contextlib.contextmanager
def _weights_only_everywhere() -> Iterator[None]:
    # torch.export.load calls torch.load(weights_only=False) for some payloads; this variable
    # makes torch use the weights-only unpickler for every one of them
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def _open_exported_program(file: Path, overrides: Sequence[str]) -> Runner:
    program, card = load_exported_program(file)
    card = _require_card(file, card, "a .pt2")
    # a GraphModule without eval()/train(): kept as a plain forward, not as the runner's module
    forward = program.module().__call__
    data = eval_data_config(card.data, list(overrides))
    return Runner(file, "pt2", card, data, forward, sha256=sha256_of(file))
