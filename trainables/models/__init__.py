"""Models, registered by name with a frozen dataclass of their arguments.

Inputs are in [0, 1]; when a model normalizes, the normalization is its first layer, so
attack budgets stay in pixel units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import Registry
from ..schema import build


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # build(args, num_classes=, in_channels=, image_size=)
    args: type


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, args_cls: type):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.register(name)(ModelEntry(fn, args_cls))
        return fn

    return deco


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants, as the model's first layer."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def create_model(
    name: str,
    args: Mapping[str, Any] | None = None,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    entry = MODELS.get(name)
    parsed = build(entry.args, args or {}, f"model_args ({name})")
    net = entry.build(parsed, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if getattr(parsed, "normalize", False):
        c = in_channels
        net = nn.Sequential(Normalize(mean or (0.5,) * c, std or (0.25,) * c), net)
    return net


def list_models() -> list[str]:
    return MODELS.names()


from . import cifar, imagenet, small  # noqa: E402,F401  (registration side effects)

__all__ = ["MODELS", "ModelEntry", "Normalize", "create_model", "list_models", "register_model"]
