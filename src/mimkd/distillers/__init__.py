"""Distillation methods, one file each, registered by `@register_distiller`.

Adding a method is one new file in this folder plus its test: the package imports every module
here, so the decorator is all the wiring there is.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from torch import nn

from mimkd.distillers.base import Distiller, DistillerContext, MethodInfo, StepOutput
from mimkd.registry import Registry

DISTILLERS: Registry[type[Distiller]] = Registry("method", "mimkd list methods")


def register_distiller(name: str, *, paper: str, taps: str, description: str | None = None):
    """Register a Distiller subclass under `name`; its `Config` dataclass holds its defaults."""

    def decorator(cls: type[Distiller]) -> type[Distiller]:
        DISTILLERS.register(
            name,
            paper=paper,
            taps=taps,
            description=description or (cls.__doc__ or "").strip().split("\n")[0],
        )(cls)
        cls.method_name = name
        return cls

    return decorator


def method_info(name: str) -> MethodInfo:
    entry = DISTILLERS.get(name)
    cls = entry.builder
    return MethodInfo(
        name=name,
        description=entry.description,
        paper=entry.info["paper"],
        taps=entry.info["taps"],
        config_class=cls.Config,
        needs_teacher=cls.needs_teacher,
        needs_indices=cls.needs_indices,
        min_batch_size=cls.min_batch_size,
    )


def list_distillers() -> list[MethodInfo]:
    return [method_info(name) for name in DISTILLERS.names()]


def method_config_class(name: str) -> type:
    return DISTILLERS.get(name).builder.Config


def create_distiller(
    name: str,
    student: nn.Module,
    teacher: nn.Module | None,
    context: DistillerContext,
    config: Any = None,
) -> Distiller:
    cls = DISTILLERS.get(name).builder
    return cls(student, teacher, config if config is not None else cls.Config(), context)


def _import_all_methods() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


_import_all_methods()

__all__ = [
    "DISTILLERS",
    "Distiller",
    "DistillerContext",
    "MethodInfo",
    "StepOutput",
    "create_distiller",
    "list_distillers",
    "method_config_class",
    "method_info",
    "register_distiller",
]
