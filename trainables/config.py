"""The training configuration: typed, frozen, resolved once, saved with every run.

Resolution order: data set and method defaults < study file / ``--set`` values. After
``resolve()`` every default is explicit (model, epochs, eps, the optimizer, the method's
variant-specific values), so the saved config says exactly what ran.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from .data import DATASETS
from .methods import METHODS
from .models import MODELS
from .schema import build, check, deep_merge


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1  # theta's peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["piecewise", "cyclic", "cosine", "constant"] = "piecewise"
    # piecewise: lr *= gamma at each fraction of training; cyclic: the peak's position
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    # cyclic only: (lowest, highest) momentum, cycled against the lr (lowest at the lr's peak),
    # as torch's CyclicLR does by default; empty = momentum fixed
    momentum_cycle: tuple[float, ...] = ()

    def validate(self, where: str) -> None:
        check(self.lr > 0, where, "lr", "a number > 0", self.lr)
        check(0 <= self.momentum < 1, where, "momentum", "a number in [0, 1)", self.momentum)
        check(self.weight_decay >= 0, where, "weight_decay", "a number >= 0", self.weight_decay)
        check(
            all(0 < m <= 1 for m in self.milestones),
            where,
            "milestones",
            "fractions of training in (0, 1]",
            self.milestones,
        )
        check(0 < self.gamma <= 1, where, "gamma", "a number in (0, 1]", self.gamma)
        if self.momentum_cycle:
            check(
                len(self.momentum_cycle) == 2 and 0 <= self.momentum_cycle[0] <= self.momentum_cycle[1] < 1,
                where,
                "momentum_cycle",
                "[lowest, highest] momentum in [0, 1)",
                self.momentum_cycle,
            )


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # data directory; CIFAR is downloaded here when missing
    download: bool = True
    image_size: int | None = None  # ImageNet crop size (224)
    loader_workers: int = 4  # DataLoader processes for folder data (ImageNet)
    # a class-stratified validation split held out of the training split: a count of images
    # (>= 1) or a fraction in (0, 1); None or 0 = none. With one, the model trains on the rest,
    # the per-epoch monitor and the screening evaluation read it, the test split is read only
    # by the final evaluation. A study's selecting stage sets the data set's default.
    val_size: float | None = None
    val_seed: int = 0  # the split's seed: the same images for every trial, whatever its seed

    def validate(self, where: str) -> None:
        check(self.loader_workers >= 0, where, "loader_workers", "an integer >= 0", self.loader_workers)
        if self.val_size is not None:
            check(
                self.val_size >= 0 and (self.val_size < 1 or float(self.val_size).is_integer()),
                where,
                "val_size",
                "a count of images (an integer >= 1), a fraction in (0, 1), or 0 for none",
                self.val_size,
            )
        check(0 <= self.val_seed < 2**32, where, "val_seed", "an integer in [0, 2^32)", self.val_seed)
        if self.image_size is not None:
            check(8 <= self.image_size <= 1024, where, "image_size", "an integer in [8, 1024]", self.image_size)


@dataclass(frozen=True)
class MonitorConfig:
    """The per-epoch check on a fixed subset of the validation split (of the test split when
    there is none: then it is a monitor only, never used to choose anything)."""

    every: int = 1  # epochs between checks; 0 = never
    n: int = 256  # images
    pgd_steps: int = 10  # PGD-k at the data set's eps, step eps/4, one random start

    def validate(self, where: str) -> None:
        check(self.every >= 0, where, "every", "an integer >= 0", self.every)
        check(self.n >= 1, where, "n", "an integer >= 1", self.n)
        check(self.pgd_steps >= 1, where, "pgd_steps", "an integer >= 1", self.pgd_steps)


@dataclass(frozen=True)
class FastConfig:
    """The GPU fast path. ``auto`` turns a feature on when the device is CUDA; on CPU the
    same code runs unchanged in fp32."""

    amp: Literal["auto", "off", "bf16"] = "auto"  # bf16 autocast for training; attacks stay fp32
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False  # torch.compile the model


@dataclass(frozen=True)
class TrainConfig:
    method: str = "sprout"
    dataset: str = "digits"
    model: str | None = None  # None = the data set's default (small_cnn for digits, vgg16 for CIFAR)
    epochs: int | None = None  # None = the data set's default, else the method's reference value
    batch_size: int | None = None  # per worker; None = the data set's (32 digits, 128 CIFAR)
    seed: int = 0
    eps: float | None = None  # L-inf budget for adversarial training and evaluation; None = data set's
    init_checkpoint: str | None = None  # start from these weights instead of random ones
    # The three sub-configs are mappings as written (YAML, --set) and typed after resolve():
    # the method's Config, the model's args dataclass and an OptimConfig.
    method_args: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)  # over the method's defaults
    data: DataConfig = field(default_factory=DataConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    fast: FastConfig = field(default_factory=FastConfig)
    keep_checkpoints: int = 2  # checkpoints kept per trial (older ones are deleted)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self, where: str) -> None:
        METHODS.get(self.method)
        DATASETS.get(self.dataset)
        if self.model is not None:
            MODELS.get(self.model)
        if self.epochs is not None:
            check(self.epochs >= 1, where, "epochs", "an integer >= 1", self.epochs)
        if self.batch_size is not None:
            check(self.batch_size >= 1, where, "batch_size", "an integer >= 1", self.batch_size)
        if self.eps is not None:
            check(0 <= self.eps <= 1, where, "eps", "a number in [0, 1] (pixel units)", self.eps)
        check(self.keep_checkpoints >= 1, where, "keep_checkpoints", "an integer >= 1", self.keep_checkpoints)
        check(0 <= self.seed < 2**32, where, "seed", "an integer in [0, 2^32)", self.seed)
        check(
            bool(re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device)),
            where,
            "device",
            "auto, cpu, cuda or cuda:N",
            self.device,
        )


def resolve(raw: Mapping[str, Any] | TrainConfig) -> TrainConfig:
    """Validate a raw mapping and fill every default explicitly. The result's ``method_args``,
    ``model_args`` and ``optim`` are typed configs; ``to_dict`` turns the whole back into plain
    data at the boundaries (checkpoints, MLflow, the Ray payload). Resolving twice is a no-op."""
    cfg = raw if isinstance(raw, TrainConfig) else build(TrainConfig, raw, "")
    method_cls = METHODS.get(cfg.method)
    data = DATASETS.get(cfg.dataset)
    model = cfg.model or data.default_model
    margs = build(MODELS.get(model).args, cfg.model_args, "model_args")
    meth = build(method_cls.Config, cfg.method_args, "method_args")
    if hasattr(meth, "resolved"):
        meth = meth.resolved()
    optim = (
        cfg.optim
        if isinstance(cfg.optim, OptimConfig)
        else build(OptimConfig, deep_merge(deep_merge(method_cls.default_optim, data.optim), cfg.optim), "optim")
    )
    epochs = cfg.epochs or data.default_epochs or method_cls.default_epochs
    eps = cfg.eps if cfg.eps is not None else data.eps
    batch_size = cfg.batch_size or data.batch_size
    if cfg.data.val_size and data.num_train:  # a split that leaves nothing to train on fails here, not on a worker
        from .data import val_count

        val_count(cfg.data.val_size, data.num_train)
    return replace(
        cfg, model=model, epochs=epochs, eps=eps, batch_size=batch_size, model_args=margs, method_args=meth, optim=optim
    )
