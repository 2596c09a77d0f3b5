"""Training methods, registered by name; one file each. See :class:`base.Method`."""

from __future__ import annotations

from ..registry import Registry
from .base import Method

METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def list_methods() -> list[str]:
    return METHODS.names()


from . import backward_smoothing, fast_at, free_at, natural, pgd_at, sprout, trades  # noqa: E402,F401

__all__ = ["METHODS", "Method", "list_methods", "register_method"]
