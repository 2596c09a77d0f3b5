"""Accuracy helpers shared by the training loop's monitor and the evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .attacks import bn_mode


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device: torch.device | None = None
) -> torch.Tensor:
    """Predicted labels in eval mode, batched; returns a CPU tensor."""
    device = device or next(model.parameters()).device
    out = []
    with bn_mode(model, "eval"):
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    if len(y) == 0:
        return float("nan")
    return (predict(model, x, batch_size=batch_size) == y.cpu()).float().mean().item()


def batched(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Apply an attack ``fn(x, y) -> x_adv`` batch by batch on ``device``; CPU result."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(fn(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).detach().cpu())
    return torch.cat(out) if out else x.clone()
