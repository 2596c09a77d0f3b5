"""Package surfaces that load their modules when a name is first used, so that importing a
package stays cheap (no torch, no Ray) while its ``__all__`` names what it exports."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def surface(package: str, home: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that finds each name of ``home`` (name -> module
    of the package that holds it) in its module. A name must not also be a module's name: once
    that module is imported, the package attribute would be the module (tests check it)."""

    def __getattr__(name: str) -> Any:
        if name in home:
            return getattr(importlib.import_module(f".{home[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
