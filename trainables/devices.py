"""Where tensors and random generators live: one rule for the whole package."""
from __future__ import annotations

import torch


def home(device: torch.device) -> torch.device:
    """``device`` if it is a GPU, else the CPU (generators, pinned buffers and reductions live
    on the GPU when there is one, so that no step waits for a host copy)."""
    return device if device.type == "cuda" else torch.device("cpu")


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A seeded generator on ``home(device)``."""
    return torch.Generator(device=home(device)).manual_seed(seed)
