"""Export a trained student for deployment: the model alone, critics, adapters and teacher dropped.

Formats: ONNX (the dynamo exporter; optionally int8 through onnxruntime's quantiser), safetensors
(weights only) and torch.export's `.pt2` (TorchScript's successor). Each file carries the model
card (`mimkd.deploy.card`), is written beside its target and renamed over it only once it has been
reopened the way `mimkd eval` opens it and its logits checked against PyTorch on real test images,
so a failed or disagreeing export never replaces a good file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from mimkd import __version__
from mimkd.config import DataConfig
from mimkd.data import DatasetBundle, make_loader
from mimkd.deploy.card import CARD_FILE, CARD_KEY, ModelCard
from mimkd.deploy.runtime import Runner, load_weights_file, open_model
from mimkd.engine.evaluate import evaluate_on_test_set, load_test_set
from mimkd.errors import MimkdError
from mimkd.serialization import atomic_write, check_output_target, check_readable_file

SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "pt2": ".pt2"}
QUANTIZATION_MODES = ("static", "dynamic")
TOLERANCE = 1e-4  # max |exported - PyTorch| logit difference on the check images (per unit logit)
CHECK_IMAGES = 64
MAX_BATCH = 65536


class ExportError(MimkdError):
    """An export that cannot be written or does not reproduce the model."""


@dataclass
class ExportResult:
    path: Path
    format: str
    card: ModelCard
    max_abs_diff: float  # exported vs PyTorch logits on `checked_on`
    checked_on: str
    size_bytes: int
    int8_path: Path | None = None
    int8_accuracy: float | None = None
    fp32_accuracy: float | None = None  # the fp32 ONNX file's, measured beside the int8 one
    int8_size_bytes: int | None = None


def export_model(
    path: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    model_name: str | None = None,
    overrides: Sequence[str] = (),
    int8: str | None = None,
    calibration_images: int = 512,
) -> ExportResult:
    """Export the model in `path` (any weights file `load_model` reads) to `out`."""
    if format not in SUFFIX:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(SUFFIX)}.")
    if int8 and (format != "onnx" or int8 not in QUANTIZATION_MODES):
        raise ExportError("--int8 static|dynamic quantises ONNX exports: add --format onnx.")
    source = check_readable_file(path, "model file", "check the path")
    target = check_output_target(Path(out) if out else source.with_suffix(SUFFIX[format]), "--out")
    if target.exists() and target.resolve() == source.resolve():
        raise ExportError(f"--out {str(target)!r} is the model file itself; choose another name.")
    int8_target = (
        check_output_target(target.with_name(f"{target.stem}.int8.onnx"), "int8 output")
        if int8
        else None
    )

    loaded, data, card = load_weights_file(source, model_name, overrides)
    # a re-exported export keeps its card, but says which mimkd wrote this file
    card = dataclasses.replace(card, mimkd_version=__version__)
    bundle = load_test_set(data)
    model = loaded.model.eval()
    images = first_images(bundle, bundle.test, CHECK_IMAGES)
    with torch.no_grad():
        expected = model(images)

    measured: dict[str, float] = {}

    def write(file: BinaryIO) -> None:
        file.write(WRITERS[format](model, card))

    def check(temp: Path) -> None:
        exported = open_model(temp)
        difference = float((exported(images) - expected).abs().max())
        measured["diff"] = difference
        # fp32 rounding grows with the logits' size: the bound is absolute up to |logit| 1
        allowed = TOLERANCE * max(1.0, float(expected.abs().max()))
        if not difference <= allowed:  # also catches NaN
            raise ExportError(
                f"the {format} export of {source} disagrees with PyTorch (max |difference| "
                f"{difference:.2e} > {allowed:.1e}); nothing was written. Please report this model."
            )

    atomic_write(target, write, "--out", check)
    result = ExportResult(
        path=target,
        format=format,
        card=card,
        max_abs_diff=measured["diff"],
        checked_on=f"{images.shape[0]} test images of {bundle.name}",
        size_bytes=target.stat().st_size,
    )
    if int8_target is not None:
        calibration = first_images(bundle, bundle.train, calibration_images)
        result.int8_accuracy = quantize_onnx(
            target, int8_target, int8, calibration, card, bundle, data
        )
        result.int8_path = int8_target
        result.int8_size_bytes = int8_target.stat().st_size
        result.fp32_accuracy = accuracy_of(open_model(target), bundle, data)
    return result


def first_images(bundle: DatasetBundle, split, count: int) -> torch.Tensor:
    """The first `count` images of a split, normalised exactly as evaluation normalises them."""
    loader = make_loader(
        split, count, mean=bundle.mean, std=bundle.std, device="cpu", train=False, num_workers=0
    )
    return next(iter(loader))[0]


def accuracy_of(runner: Runner, bundle: DatasetBundle, data: DataConfig) -> float:
    return evaluate_on_test_set(runner.as_module(), bundle, data, torch.device("cpu"))["top1"]


# ---- the three formats --------------------------------------------------------------------------


def _example(card: ModelCard) -> torch.Tensor:
    # batch 2: torch.export specialises a dimension it sees at size 1
    return torch.zeros(2, *card.input_shape)


# Each writer returns the file's bytes: the caller writes them with Python's file API, whose
# errors (a full disk) are OSErrors, where the libraries' own writers raise their own types.


def write_safetensors(model: nn.Module, card: ModelCard) -> bytes:
    from safetensors.torch import save

    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    metadata = {
        CARD_KEY: card.to_json(),
        # the flat keys earlier mimkd versions wrote and read
        "model_name": card.architecture,
        "num_classes": str(card.num_classes),
        "image_shape": "x".join(map(str, card.input_shape)),
    }
    return save(state, metadata=metadata)


def write_pt2(model: nn.Module, card: ModelCard) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        program = torch.export.export(model, (_example(card),), dynamic_shapes=({0: batch},))
    except Exception as error:  # torch.export reports unsupported code with many types
        raise ExportError(
            f"torch.export cannot trace {card.architecture!r} ({_first_line(error)}); "
            "try --format onnx or safetensors."
        ) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={CARD_FILE: card.to_json()})
    return buffer.getvalue()


def write_onnx(model: nn.Module, card: ModelCard) -> bytes:
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before tracing)
    except ImportError:
        raise ExportError(
            'ONNX export needs the onnx package: pip install "mimkd[export]".'
        ) from None
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        # the exporter reports its steps on stdout; a CLI's stdout is its result
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                model,
                (_example(card),),
                None,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                dynamo=True,
                verbose=False,
            )
    except Exception as error:  # the exporter raises many types for unsupported operators
        raise ExportError(
            f"the ONNX exporter cannot convert {card.architecture!r} ({_first_line(error)}); "
            "try --format pt2 or safetensors."
        ) from None
    proto = program.model_proto
    set_onnx_card(proto, card)
    return proto.SerializeToString()


def set_onnx_card(proto, card: ModelCard) -> None:
    for entry in list(proto.metadata_props):
        if entry.key == CARD_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


WRITERS = {"onnx": write_onnx, "safetensors": write_safetensors, "pt2": write_pt2}


# ---- int8 -------------------------------------------------------------------------------------


def quantize_onnx(
    fp32_path: Path,
    target: Path,
    mode: str,
    calibration: torch.Tensor,
    card: ModelCard,
    bundle: DatasetBundle,
    data: DataConfig,
) -> float:
    """onnxruntime's int8 quantisation: `static` (QDQ, activations calibrated on `calibration`,
    per-channel weights) or `dynamic` (weights only, activations quantised at run time).

    Returns the int8 model's test accuracy, which its card records (it is not the fp32 one)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self, images: torch.Tensor, batch_size: int = 64):
            self.batches = iter([{"images": chunk.numpy()} for chunk in images.split(batch_size)])

        def get_next(self):
            return next(self.batches, None)

    try:
        with tempfile.TemporaryDirectory() as scratch:
            # shape inference and graph clean-up, as onnxruntime advises before quantising
            prepared, quantized = Path(scratch) / "prepared.onnx", Path(scratch) / "int8.onnx"
            quant_pre_process(str(fp32_path), str(prepared))
            if mode == "static":
                quantize_static(
                    str(prepared),
                    str(quantized),
                    Batches(calibration),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                )
            else:
                quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
            accuracy = accuracy_of(open_model(quantized), bundle, data)
            proto = onnx.load(str(quantized))
    except MimkdError:
        raise
    except Exception as error:  # the quantiser raises many types (unsupported graphs, disk)
        raise ExportError(
            f"onnxruntime could not quantise {fp32_path} ({_first_line(error)}); the fp32 "
            "export is written, use it, or try --int8 dynamic."
        ) from None
    set_onnx_card(proto, dataclasses.replace(card, precision=f"int8 {mode}", accuracy=accuracy))
    atomic_write(target, lambda file: file.write(proto.SerializeToString()), "int8 output")
    return accuracy


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:120] if text else type(error).__name__
