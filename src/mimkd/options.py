"""Config fields that describe themselves: help text, choices and ranges as dataclass metadata.

Every typed config (the run's, each method's) declares its fields with `option(...)`, so `--help`,
`mimkd list methods` and validation read one source: the field itself. `check(config)` enforces
the choices and ranges once, at load time, with an error that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from mimkd.errors import ConfigError, did_you_mean


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | list | None = None,
    minimum: float | None = None,
    greater_than: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A dataclass field with its meaning and allowed values (`minimum`/`maximum` inclusive).

    Mutable defaults (lists, dicts) become per-instance copies, as dataclasses require.
    """
    metadata = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "greater_than": greater_than,
        "maximum": maximum,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_help(field: dataclasses.Field) -> str:
    text = field.metadata.get("help", "")
    choices = field.metadata.get("choices")
    if choices and not all(str(choice) in text for choice in choices):
        listed = " | ".join(map(str, choices))
        text = f"{text} ({listed})" if text else listed
    return text


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _range_text(field: dataclasses.Field) -> str:
    meta = field.metadata
    parts = []
    if meta.get("greater_than") is not None:
        parts.append(f"> {meta['greater_than']}")
    if meta.get("minimum") is not None:
        parts.append(f">= {meta['minimum']}")
    if meta.get("maximum") is not None:
        parts.append(f"<= {meta['maximum']}")
    return " and ".join(parts)


def check(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first field outside its declared choices or range (recursive;
    a list of numbers, e.g. optim.milestones, is checked item by item)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            check(value, f"{key}.")
            continue
        meta = field.metadata
        choices = meta.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"bad value {value!r} for {key}: choose one of {', '.join(map(str, choices))}."
                f"{did_you_mean(str(value), map(str, choices))}"
            )
        for item in value if isinstance(value, (list, tuple)) else [value]:
            _check_number(item, key, field)


def _check_number(value: Any, key: str, field: dataclasses.Field) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if value != value:  # NaN compares unequal to itself and passes every range test
        raise ConfigError(f"bad value nan for {key}: give a number.")
    if value in (math.inf, -math.inf):
        raise ConfigError(f"bad value {value} for {key}: give a finite number.")
    meta = field.metadata
    low, above, high = meta.get("minimum"), meta.get("greater_than"), meta.get("maximum")
    if (
        (low is not None and value < low)
        or (above is not None and value <= above)
        or (high is not None and value > high)
    ):
        raise ConfigError(f"bad value {value!r} for {key}: it must be {_range_text(field)}.")


__all__ = ["check", "field_default", "field_help", "option"]
