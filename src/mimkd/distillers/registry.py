"""The method registry: `@register_distiller("name", ...)` on a `Distiller` subclass is all the
wiring a method needs; names are the public API (`method=name`, `mimkd list methods`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mimkd.distillers.base import Distiller, DistillerContext, MethodInfo
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
        cls.Config.method_name = name
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
