"""Models from configs and files: the model a training config names (random init, or its
``init_checkpoint``'s weights), and the model, config and data of one of our checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import nn

from .checkpoint import load_checkpoint, load_weights
from .config import TrainConfig, resolve
from .data import DATASETS, DataBundle, get_dataset
from .errors import CheckpointError
from .models import create_model
from .published import published_loader, source_normalizes, split_format
from .schema import to_dict


def build_model(cfg: TrainConfig, bundle: DataBundle | None = None) -> nn.Module:
    """The model of a training config (random init, or ``init_checkpoint``'s weights: one of our
    checkpoints, or published weights named with their format, ``trades_wrn:/path``), sized for
    its data set (``bundle``, loaded from the config when not given)."""
    entry = DATASETS.get(cfg.dataset)
    if bundle is None:
        bundle = get_dataset(
            cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size
        )
    net = create_model(
        cfg.model,
        cfg.model_args,
        num_classes=bundle.num_classes,
        in_channels=bundle.in_channels,
        image_size=bundle.image_size,
        mean=entry.mean,
        std=entry.std,
    )
    if cfg.init_checkpoint:
        published = published_loader(cfg.init_checkpoint)  # "torchvision:/path", ...
        if published is not None:
            published(net, cfg.model, to_dict(cfg.model_args))
        else:
            load_weights(net, load_checkpoint(cfg.init_checkpoint), cfg.init_checkpoint, cfg.model)
    return net


EVALUATION_KEYS = ("model", "model_args", "dataset", "eps", "data")  # describe published weights (and "method")


def evaluation_config(spec: str, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config of a model that is evaluated, not trained: ``spec`` names one of our checkpoint
    files (its own config, with ``base``'s ``data`` settings: where the data is read is decided
    here, not by a file) or published weights with their format (``trades_wrn:/path``: ``base``
    gives the model, its arguments, the data set and the method that trained them, for tables and
    the paper's numbers). Its ``init_checkpoint`` is ``spec``, so
    ``build_model`` returns the model carrying those weights."""
    base = dict(base or {})
    fmt, path = split_format(spec)
    if fmt is None:
        state = load_checkpoint(path)
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{path}: holds no training config: name published weights as FORMAT:{path}")
        raw = dict(state["config"])
        raw["data"] = {**(raw.get("data") or {}), **(base.get("data") or {})}
    else:
        raw = {k: base[k] for k in EVALUATION_KEYS if k in base}
        args = dict(raw.get("model_args") or {})
        if "normalize" not in args and raw.get("model"):  # as the source did, unless the caller says
            args["normalize"] = source_normalizes(path, fmt)
        raw["model_args"] = args
        raw["method"] = base.get("method") or "natural"  # what trained it, as its publisher says
    raw["init_checkpoint"] = spec
    return resolve(raw)


def load_model_from_checkpoint(
    path: str, *, expect_model: str | None = None, data_root: str | None = None, download: bool | None = None
) -> tuple[nn.Module, TrainConfig, DataBundle]:
    """Model, resolved config and data of one of our checkpoints. ``data_root`` and
    ``download`` (when given) replace what the checkpoint's config says: the command line
    decides where data is read and whether anything is fetched, not a file."""
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config (not written by trainables)")
    raw = dict(state["config"])
    raw["init_checkpoint"] = None
    if download is not None:  # the command line decides both (trainables.evaluate)
        raw["data"] = {**(raw.get("data") or {}), "root": data_root, "download": download}
    elif data_root is not None:
        raw["data"] = {**(raw.get("data") or {}), "root": data_root}
    cfg = resolve(raw)
    if expect_model is not None and expect_model != cfg.model:
        raise CheckpointError(f"{path}: checkpoint architecture is {cfg.model}, not the requested {expect_model}")
    bundle = get_dataset(cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size)
    model = build_model(replace(cfg, init_checkpoint=None), bundle)
    load_weights(model, state, path, cfg.model)
    return model, cfg, bundle
