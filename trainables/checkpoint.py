"""Checkpoints: one dict holding the model, the method's state (SPROUT's beta), the optimizer,
the epoch and the resolved config, and the names of the files a checkpoint directory holds.
Loaded with ``torch.load(weights_only=True)``, so a checkpoint carrying a pickled payload is
refused. torch loads inside the functions: the file names are read by layers that never train."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError
from .files import is_uri, read_uri_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "sprout-orchestrator/1"
CHECKPOINT_FILE = "checkpoint.pt"  # the model and training state, in every checkpoint directory
EVAL_FILE = "eval.json"  # an evaluation's results: a trial's screening in its last checkpoint, the CLI's output
METRICS_FILE = "metrics.json"  # a training run's resolved config, per-epoch history and final metrics


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written checkpoint."""
    import tempfile

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )  # unique: two writers never meet
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint file (local, or a storage URI: an earlier stage's in the study's object
    store), loaded with ``weights_only=True``; every way it can be wrong is one CheckpointError."""
    import io

    if is_uri(path):  # read whole into memory, then loaded as a local file is
        try:
            return _torch_load(io.BytesIO(read_uri_bytes(str(path))), str(path))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: cannot be read ({str(e).splitlines()[0][:160]})") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty (0 bytes): truncated or not a torch checkpoint")
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # torch's zip format, or a legacy pickle
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint (neither torch's zip format nor a pickle)")
    return _torch_load(path, str(path))


def _torch_load(source: Any, label: str) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{label}: refused: holds objects other than tensors and plain data "
            f"(loaded with weights_only=True; {first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{label}: truncated or not a torch checkpoint ({str(e).splitlines()[0][:160]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{label}: expected a dict checkpoint, got {type(state).__name__}")
    return state


def model_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from one of our checkpoints or from a bare state dict."""
    import torch

    if "model" in state and isinstance(state["model"], dict):
        return state["model"]
    if all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError("checkpoint holds no 'model' state dict")


def load_weights(model: nn.Module, state: dict[str, Any], path: str | os.PathLike, expected: str) -> None:
    """Load weights strictly; a checkpoint of another architecture is one clear error."""
    weights = model_weights(state)
    saved = state.get("config", {}) if isinstance(state.get("config"), dict) else {}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        arch = f"{saved.get('model')} {saved.get('model_args', '')}".strip() if saved else "unknown"
        n_missing = str(e).count("Missing key") + str(e).count("size mismatch")
        raise CheckpointError(
            f"{path}: checkpoint architecture ({arch}) does not match the model {expected} "
            f"({n_missing or 'some'} mismatching entries)"
        ) from None
