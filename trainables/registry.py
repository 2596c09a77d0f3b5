"""Name -> factory registries (the timm ``register_model`` pattern).

Every method, model and data set registers itself by name with a decorator; tests are
parametrized over ``names()`` so a new entry is tested the moment it is registered.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def ordered(self) -> list[str]:
        """Names in registration order."""
        return list(self._entries)

    def __contains__(self, name: Any) -> bool:
        return name in self._entries


def declared_names(files: list[Path], decorator: str) -> list[str]:
    """Names registered with ``decorator("name", ...)`` in ``files``, read from the source
    without importing it (command-line help lists them without loading torch). A test keeps
    this equal to the live registry."""
    names = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == decorator
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.append(node.args[0].value)
    return sorted(set(names))


def declared(kind: str) -> list[str]:
    """Declared method, model or data-set names (``kind`` in methods, models, datasets)."""
    here = Path(__file__).resolve().parent
    if kind == "methods":
        return declared_names(sorted((here / "methods").glob("*.py")), "register_method")
    if kind == "models":
        return declared_names(sorted((here / "models").glob("*.py")), "register_model")
    if kind == "datasets":
        return declared_names([here / "data.py"], "register_dataset")
    raise ValueError(kind)
