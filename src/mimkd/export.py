"""Export a distilled student for deployment: the student alone, critics and adapters dropped.

Formats: ONNX (checked against PyTorch with onnxruntime when it is installed), safetensors
(weights only, with the architecture name in its metadata) and torch.export's .pt2 (TorchScript's successor).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mimkd.errors import CheckpointError, MimkdError
from mimkd.models.loading import load_model
from mimkd.serialization import load_checkpoint

SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "pt2": ".pt2"}


def export_checkpoint(checkpoint: str, format: str = "onnx", out: str | None = None) -> Path:
    record = load_checkpoint(checkpoint)
    if not isinstance(record, dict) or "model_name" not in record:
        raise CheckpointError(
            f"{checkpoint} is not a mimkd checkpoint; export needs one written by `mimkd train`/`distill`."
        )
    channels, height, width = record["image_shape"]
    loaded = load_model(
        checkpoint,
        model_name=record["model_name"],
        num_classes=record["num_classes"],
        in_channels=channels,
        image_size=height,
    )
    model = loaded.model.eval()
    target = Path(out) if out else Path(checkpoint).with_suffix(SUFFIX[format])
    example = torch.zeros(1, channels, height, width)
    if format == "safetensors":
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        metadata = {
            "model_name": record["model_name"],
            "num_classes": str(record["num_classes"]),
            "image_shape": "x".join(map(str, record["image_shape"])),
        }
        save_file(state, str(target), metadata=metadata)
    elif format == "pt2":
        # torch.export's ExportedProgram (TorchScript's successor), with a dynamic batch size
        batch = torch.export.Dim("batch", min=1, max=65536)
        program = torch.export.export(
            model, (example.expand(2, -1, -1, -1),), dynamic_shapes=({0: batch},)
        )
        torch.export.save(program, str(target))
    else:
        _export_onnx(model, example, target)
    return target


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, target: Path) -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MimkdError(
            'ONNX export needs the onnx package: pip install "mimkd[export]".'
        ) from None
    with torch.no_grad():
        batch = torch.export.Dim("batch", min=1, max=65536)
        torch.onnx.export(
            model,
            (example.expand(2, -1, -1, -1),),
            str(target),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    batch = torch.randn(3, *example.shape[1:])
    with torch.no_grad():
        expected = model(batch).numpy()
    got = session.run(None, {"images": batch.numpy()})[0]
    if abs(got - expected).max() > 1e-3:
        raise MimkdError(
            f"the ONNX export of {target} disagrees with PyTorch (max difference {abs(got - expected).max():.2e}); please report this model."
        )
