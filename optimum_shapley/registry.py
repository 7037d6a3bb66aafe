"""The names of the layer-selection methods and the classes behind them.

A leaf module (it imports nothing of the package), so ``ShapleyPruningConfig`` validates ``method`` without
importing the criteria, which import the config. The built-in names are data here, in display order (help text,
CLI choices, bench tables); each criterion module fills its slot with ``@register_criterion``. A user's own
criterion registers the same way under a new name; registering a taken name is an error unless ``replace=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["BUILTIN_METHODS", "CRITERIA", "DEFAULT_METHOD", "Registry", "methods_help", "register_criterion"]

DEFAULT_METHOD = "shapley"

BUILTIN_METHODS: tuple[str, ...] = (
    "shapley",
    "shapley-paper",
    "block-influence",
    "angular",
    "sleb",
    "ppl",
    "evopress",
    "taylor",
    "reverse-order",
    "random",
)
"""The methods that ship with the package, in display order."""


class Registry(Mapping):
    """Name -> class, with the built-in names known before their modules are imported; duplicates are refused."""

    def __init__(self, kind: str, builtin: tuple[str, ...]):
        self.kind = kind
        self.builtin = builtin
        self._classes: dict[str, Any] = {}

    def register(self, cls: Any = None, *, name: str | None = None, replace: bool = False) -> Any:
        """Register ``cls`` under ``name`` (default ``cls.name``); usable as ``@register`` or ``register(cls, ...)``."""
        if cls is None:
            return lambda inner: self.register(inner, name=name, replace=replace)
        key = name or getattr(cls, "name", None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {key!r}")
        if key in self._classes and not replace and self._classes[key] is not cls:
            raise ValueError(
                f"a {self.kind} named {key!r} is already registered ({self._classes[key].__qualname__}); pass "
                "replace=True to override it"
            )
        self._classes[key] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """Every valid name: the built-in ones (registered or not yet imported), then the user's, in order."""
        return self.builtin + tuple(k for k in self._classes if k not in self.builtin)

    def __getitem__(self, key: str) -> Any:
        if key not in self._classes:
            raise KeyError(f"unknown {self.kind} {key!r}; choose one of {self.names()}")
        return self._classes[key]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.names() if name in self._classes)

    def __len__(self) -> int:
        return len(self._classes)


CRITERIA = Registry("method", BUILTIN_METHODS)
"""The layer-selection criteria; ``optimum_shapley.criteria`` registers the built-in ones."""

register_criterion = CRITERIA.register


def methods_help() -> str:
    """The method names for help text, the default marked."""
    return ", ".join(f"{n} (default)" if n == DEFAULT_METHOD else n for n in CRITERIA.names())
