"""The model registry: zoo builders by name, and `tv:`/`timm:` names passed through.

`create_model(name, num_classes=...)` and `list_models()` are the public entry points. Zoo models
register themselves with `@register_model`; names are the public API (timm's registry pattern).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mimkd.errors import MimkdError
from mimkd.registry import Registry

MODELS: Registry[nn.Module] = Registry("model", "mimkd list models")
EXTERNAL_PREFIXES = ("tv:", "timm:")


def register_model(
    name: str, *, input_size: int = 32, family: str = "cifar", description: str | None = None
):
    """Register a zoo model builder `fn(num_classes=..., in_channels=..., **kwargs) -> nn.Module`."""
    return MODELS.register(name, input_size=input_size, family=family, description=description)


@dataclass
class ModelInfo:
    name: str
    description: str
    family: str
    input_size: int
    parameters: int | None = None
    taps: dict[str, Any] | None = None


def create_model(
    name: str, num_classes: int = 100, in_channels: int = 3, **kwargs: Any
) -> nn.Module:
    """Build a model by name; `tv:`/`timm:` names pass `num_classes` and `weights` through."""
    if name.startswith(EXTERNAL_PREFIXES):
        from mimkd.models import external  # imports torchvision (and timm) only when asked

        return external.create_external(
            name, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    entry = MODELS.get(name)
    try:
        return entry.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as error:
        raise MimkdError(f"model {name!r} does not accept these arguments ({error}).") from None


def list_models(with_details: bool = False, num_classes: int = 100) -> list[ModelInfo]:
    """Every zoo model; with details, its parameter count and taps (builds each once).

    Counts are at `num_classes` (100, as in the CRD tables), the small CNNs at 10.
    """
    from mimkd.features import discover_taps

    infos = []
    for entry in MODELS.entries():
        info = ModelInfo(
            entry.name, entry.description, entry.info["family"], entry.info["input_size"]
        )
        if with_details:
            import torch

            small = entry.info["family"] == "mnist"  # Fashion-MNIST models: 10 classes, grey
            in_channels = 1 if small else 3
            model = entry.builder(num_classes=10 if small else num_classes, in_channels=in_channels)
            info.parameters = sum(p.numel() for p in model.parameters())
            size = entry.info["input_size"]
            taps = discover_taps(model, torch.zeros(2, in_channels, size, size))
            info.taps = {
                "last_map": taps.last_map,
                "penultimate": taps.penultimate,
                "stages": taps.stages,
            }
        infos.append(info)
    return infos


def is_known_model(name: str) -> bool:
    return name.startswith(EXTERNAL_PREFIXES) or name in MODELS
