"""Distillation methods, one file each, registered by `@register_distiller`.

Adding a method is one new file in this folder plus its test: the package imports every module
here, so the decorator is all the wiring there is, and the contract test (which iterates the
registry) covers the method the moment its file exists.
"""

from __future__ import annotations

import importlib
import pkgutil

from mimkd.distillers.base import (
    DistillConfig,
    Distiller,
    DistillerContext,
    MethodInfo,
    Stage,
    Step,
    StepOutput,
)
from mimkd.distillers.registry import (
    DISTILLERS,
    create_distiller,
    list_distillers,
    method_config_class,
    method_info,
    register_distiller,
)

# modules here that hold no method
_SUPPORT_MODULES = ("adapters", "base", "losses", "registry")


def _import_all_methods() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _SUPPORT_MODULES:
            importlib.import_module(f"{__name__}.{module.name}")


_import_all_methods()

__all__ = [
    "DISTILLERS",
    "DistillConfig",
    "Distiller",
    "DistillerContext",
    "MethodInfo",
    "Stage",
    "Step",
    "StepOutput",
    "create_distiller",
    "list_distillers",
    "method_config_class",
    "method_info",
    "register_distiller",
]
