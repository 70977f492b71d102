"""One registry pattern for models, datasets, distillers and MI estimators (timm-style).

A name registered with `@REGISTRY.register("name")` is public API: `create(name, **kwargs)` builds
it, `list()` describes everything registered. Adding a component is one decorated definition; no
central if/elif ever changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mimkd.errors import UnknownNameError, did_you_mean

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    def __init__(self, kind: str, list_command: str):
        self.kind = kind
        self.list_command = list_command
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = inspect.getdoc(builder) or ""
            description = info.pop("description", None) or doc.split("\n\n")[0].replace("\n", " ")
            self._entries[name] = Entry(name, builder, description, dict(info))
            return builder

        return decorator

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Run `{self.list_command}` to see every {self.kind}."
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name).builder(**kwargs)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[name] for name in self.names()]
