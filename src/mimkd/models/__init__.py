"""Models by name: the zoo (`resnet32x4`, `cnn_tiny`, ...), `tv:<name>` torchvision, `timm:<name>`.

`create_model(name, num_classes=...)` and `list_models()` are the public entry points (defined in
`registry`). Zoo models register themselves with `@register_model`; every module in this package is
imported so the decorator is all the wiring there is.
"""

from __future__ import annotations

import importlib
import pkgutil

from mimkd.errors import UnknownNameError
from mimkd.models.registry import (
    EXTERNAL_PREFIXES,
    MODELS,
    ModelInfo,
    create_model,
    is_known_model,
    list_models,
    register_model,
)


def _import_all_models() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("external", "registry"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all_models()

__all__ = [
    "EXTERNAL_PREFIXES",
    "MODELS",
    "ModelInfo",
    "UnknownNameError",
    "create_model",
    "is_known_model",
    "list_models",
    "register_model",
]
