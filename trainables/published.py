"""Published weights, by named format, as the project's models.

A published checkpoint is a state dict in its authors' layout. ``load_published`` returns the
project's model (inputs in [0, 1], normalizing as its first layer where the source normalized)
carrying those weights, so that every attack and evaluation here runs on it unchanged. Formats:

- ``torchvision``: ImageNet ResNet-50/152 state dicts as torchvision saves them (the caller of
  torchvision's models normalizes with the ImageNet mean and std: here the model's first layer);
- ``trades_wrn``: the TRADES WideResNet (``block1.layer.N``, ``convShortcut``, the unused
  ``sub_block1`` its checkpoints carry, no input normalization);
- ``robustbench``: RobustBench model-zoo state dicts for the architectures the project has
  (WideResNet-28-10 and -34-10 in the TRADES layout; PreAct ResNet-18 with its final BatchNorm,
  ``bn_before_fc=True``), with the wrappers their files use (``state_dict``, ``module.``, the
  ``mu``/``sigma`` of a normalizing model).

Files are read with ``weights_only=True``: nothing is unpickled but tensors and plain data. A file
whose keys or shapes do not fit is one ``CheckpointError`` naming the format, the model and up
to three of the keys that differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .errors import CheckpointError, ConfigError
from .models import Normalize, create_model

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FORMATS = ("torchvision", "trades_wrn", "robustbench")
_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(?!//)(.+)$")  # "fmt:/path", not "s3://..."


def split_format(spec: str) -> tuple[str | None, str]:
    """``"trades_wrn:/path/model.pt"`` -> ``("trades_wrn", "/path/model.pt")``; a plain path (one
    of the project's own checkpoints) -> ``(None, path)``. An unknown prefix is a ConfigError."""
    m = _PREFIX.match(spec)
    if not m or len(m.group(1)) == 1:  # "C:\\..." stays a path
        return None, spec
    fmt, path = m.groups()
    if fmt not in FORMATS:
        raise ConfigError(f"{spec}: unknown checkpoint format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt, path


def _unwrap(state: Mapping[str, Any], path: str, fmt: str) -> dict[str, torch.Tensor]:
    """The bare state dict inside a published file: under ``state_dict`` or ``model`` where the
    file wraps it, without DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: format {fmt}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _wrn_keys(state: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """TRADES/RobustBench WideResNet keys -> the project's (``sub_block1`` is never used in the
    source's forward pass: dropped)."""
    out = {}
    for k, v in state.items():
        if k.startswith("sub_block1."):
            continue
        m = re.match(r"^block([123])\.layer\.(\d+)\.(.+)$", k)
        if m:
            g, i, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            k = f"blocks.{(g - 1) * n + i}.{rest.replace('convShortcut', 'shortcut')}"
        elif k.startswith("bn1."):
            k = "bn." + k[4:]
        out[k] = v
    return out


def _preact_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RobustBench PreAct ResNet-18 keys -> the project's."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^layer([1-4])\.(\d+)\.(.+)$", k)
        if m:
            rest = m.group(3).replace("shortcut.0.", "shortcut.")
            k = f"layers.{(int(m.group(1)) - 1) * 2 + int(m.group(2))}.{rest}"
        elif k.startswith("linear."):
            k = "fc." + k[7:]
        out[k] = v
    return out


def _body_state(fmt: str, model: str, args: Mapping[str, Any], state: dict) -> dict[str, torch.Tensor]:
    """The source's weights under the project's key names for ``model`` (without normalization)."""
    if fmt == "torchvision":
        return state
    if model == "wrn":
        return _wrn_keys(state, (int(args.get("depth", 34)) - 4) // 6)
    return _preact_keys(state)


_MODELS: dict[str, tuple[str, ...]] = {
    "torchvision": ("resnet50", "resnet152"),
    "trades_wrn": ("wrn",),
    "robustbench": ("wrn", "preact_resnet18"),
}


def _source_norm(fmt: str, state: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalization the source applied to [0, 1] inputs (None: it took them as they are)."""
    if fmt == "torchvision":
        return IMAGENET_MEAN, IMAGENET_STD
    if "mu" in state and "sigma" in state:
        mu, sigma = state.pop("mu"), state.pop("sigma")
        return tuple(mu.flatten().tolist()), tuple(sigma.flatten().tolist())
    return None


def _mismatch(fmt: str, model: str, path: str, net: nn.Module, state: dict) -> str | None:
    """None when ``state`` fits ``net`` exactly; else the message naming up to three keys."""
    want = net.state_dict()
    bad = [f"{k} (missing from the file)" for k in want if k not in state]
    bad += [f"{k} (not in {model})" for k in state if k not in want]
    bad += [
        f"{k} (shape {tuple(state[k].shape)} in the file, {tuple(want[k].shape)} in {model})"
        for k in want
        if k in state and state[k].shape != want[k].shape
    ]
    if not bad:
        return None
    more = f", and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"{path}: format {fmt} does not fit model {model}: {'; '.join(bad[:3])}{more}"


def load_into(net: nn.Module, path: str, fmt: str, model: str, model_args: Mapping[str, Any] | None = None) -> None:
    """Load the published file ``path`` of format ``fmt`` into ``net``, the project's ``model``
    built with ``model_args``: the source's weights into its body, and its normalization into
    the first layer (a model that normalizes where the source did not, or the other way round,
    is refused: its logits would differ)."""
    if fmt not in FORMATS:
        raise ConfigError(f"checkpoint format: unknown {fmt!r}: expected one of {', '.join(FORMATS)}")
    if model not in _MODELS[fmt]:
        raise ConfigError(f"{path}: format {fmt} holds {' or '.join(_MODELS[fmt])} weights, not model {model}")
    state = _unwrap(load_checkpoint(path), path, fmt)
    norm = _source_norm(fmt, state)
    body = _body_state(fmt, model, model_args or {}, state)
    has_norm = isinstance(net, nn.Sequential) and isinstance(net[0], Normalize)
    if has_norm != (norm is not None):
        want = "true" if norm is not None else "false"
        raise ConfigError(f"{path}: format {fmt} ({model}): model_args.normalize: expected {want}, as the source")
    if has_norm:
        body = {f"1.{k}": v for k, v in body.items()}
        body["0.mean"] = torch.tensor(norm[0]).view(1, -1, 1, 1)
        body["0.std"] = torch.tensor(norm[1]).view(1, -1, 1, 1)
    problem = _mismatch(fmt, model, path, net, body)
    if problem:
        raise CheckpointError(problem)
    net.load_state_dict(body, strict=True)


def load_published(
    path: str, fmt: str, model: str, model_args: Mapping[str, Any] | None = None, *, image_size: int = 32
) -> nn.Module:
    """The project's ``model`` (inputs in [0, 1], normalizing where the source did) carrying the
    published weights in ``path`` of format ``fmt`` (``FORMATS``); its number of classes is the
    file's. In eval mode."""
    if fmt not in FORMATS:
        raise ConfigError(f"checkpoint format: unknown {fmt!r}: expected one of {', '.join(FORMATS)}")
    state = _unwrap(load_checkpoint(path), path, fmt)
    head = [v for k, v in state.items() if k.endswith(("fc.weight", "linear.weight"))]
    if not head:
        raise CheckpointError(f"{path}: format {fmt} does not fit model {model}: no classifier (fc or linear) weight")
    norm = _source_norm(fmt, dict(state))
    args = {**(model_args or {}), "normalize": norm is not None}
    net = create_model(
        model, args, num_classes=head[-1].shape[0], in_channels=3, image_size=image_size,
        mean=norm[0] if norm else None, std=norm[1] if norm else None,
    )  # fmt: skip
    load_into(net, path, fmt, model, args)
    return net.eval()


def source_normalizes(path: str, fmt: str) -> bool:
    """Whether the published file's source normalized its [0, 1] inputs."""
    return _source_norm(fmt, dict(_unwrap(load_checkpoint(path), path, fmt))) is not None


def published_loader(spec: str) -> Callable[[nn.Module, str, Mapping[str, Any]], None] | None:
    """For a checkpoint named with a format prefix: a function loading it into a built model
    (``net, model, model_args``); None for one of the project's own checkpoints."""
    fmt, path = split_format(spec)
    if fmt is None:
        return None
    return lambda net, model, args: load_into(net, path, fmt, model, args)


__all__ = [
    "FORMATS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_into",
    "load_published",
    "published_loader",
    "split_format",
]
