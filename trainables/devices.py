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


def pick_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        from .errors import ConfigError

        raise ConfigError(
            f"device {spec}: not available here ({torch.cuda.device_count()} CUDA device(s)); use auto or cpu"
        )
    return device
