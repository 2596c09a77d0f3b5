"""The per-epoch training loop, written once and used by ``python -m trainables.train`` and by
the Ray Train workers. It never imports Ray: the orchestrator passes hooks instead.

DDP-ready: with a process group, the training data is sharded per rank, the model is wrapped
(by ``prepare_model`` or by plain DDP), per-epoch metrics are averaged across ranks, and only
rank 0 evaluates and builds checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .attacks import pgd_linf
from .config import FastConfig, OptimConfig, TrainConfig
from .data import DataBundle, dist_info, get_dataset, make_train_loader, set_loader_epoch, with_validation
from .devices import generator, home, pick_device
from .errors import DivergedError
from .loading import build_model
from .methods import METHODS, Method
from .metrics import accuracy, batched
from .schema import to_dict
from .utilisation import UsageSampler, per_worker

EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]] | None], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(opt: OptimConfig, epochs: int, t: float) -> float:
    """Learning-rate multiplier at fractional epoch ``t`` in [0, epochs)."""
    frac = t / max(epochs, 1)
    if opt.schedule == "piecewise":
        return opt.gamma ** sum(frac >= m for m in opt.milestones)
    if opt.schedule == "cyclic":  # triangular: 0 -> 1 at the peak -> 0 at the end
        peak = opt.milestones[0] if opt.milestones else 0.4
        return frac / peak if frac < peak else max(0.0, (1 - frac) / (1 - peak))
    if opt.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float, opt_cfg: OptimConfig | None = None) -> None:
    """Scale every optimizer's lr by ``factor``; with a momentum cycle, the model optimizer's
    momentum goes the other way (highest at factor 0, lowest at the lr's peak)."""
    for opt in optimizers:
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * factor
    if opt_cfg is not None and opt_cfg.schedule == "cyclic" and opt_cfg.momentum_cycle:
        low, high = opt_cfg.momentum_cycle
        for g in optimizers[0].param_groups:
            g["momentum"] = high - (high - low) * factor


def amp_dtype(fast: FastConfig, device: torch.device, method_cls: type[Method] | None = None) -> torch.dtype | None:
    """bf16 when asked; under ``auto``, on the GPU for methods whose robustness bf16 was
    measured not to cost (``Method.bf16_default``, from bench/precision.py); else fp32."""
    if fast.amp == "bf16":
        return torch.bfloat16
    if fast.amp == "auto" and device.type == "cuda" and (method_cls is None or method_cls.bf16_default):
        return torch.bfloat16
    return None


@dataclass
class Components:
    """Everything a run is made of, built from a resolved config."""

    cfg: TrainConfig
    bundle: DataBundle
    net: nn.Module  # unwrapped model
    model: nn.Module  # what the method trains (DDP-wrapped under a process group)
    optimizer: torch.optim.Optimizer
    method: Method
    loader: Any
    device: torch.device
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def build(
    cfg: TrainConfig,
    *,
    device: torch.device | None = None,
    resume: dict[str, Any] | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
    bundle: DataBundle | None = None,
) -> Components:
    """Build data, model, optimizer and method; restore them from ``resume`` if given."""
    device = device or pick_device(cfg.device)
    seed_everything(cfg.seed)
    if bundle is None:
        bundle = get_dataset(
            cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size
        )
    if not bundle.has_val:  # train on the training split minus the validation split
        bundle = with_validation(bundle, cfg.data.val_size, cfg.data.val_seed)
    net = build_model(cfg, bundle)
    channels_last = cfg.fast.channels_last == "on" or (cfg.fast.channels_last == "auto" and device.type == "cuda")
    net = net.to(device, memory_format=torch.channels_last) if channels_last else net.to(device)
    if resume is not None:
        net.load_state_dict(resume["model"])
    model: nn.Module = net
    if prepare_model is not None:
        model = prepare_model(net)
    elif dist.is_available() and dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.fast.compile:
        model = torch.compile(model)
    opt_cfg = cfg.optim
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=opt_cfg.lr,
        momentum=opt_cfg.momentum,
        weight_decay=opt_cfg.weight_decay,
        nesterov=opt_cfg.nesterov,
    )
    method_cls = METHODS.get(cfg.method)
    method = method_cls(
        model,
        optimizer,
        cfg.method_args,
        num_classes=bundle.num_classes,
        eps=cfg.eps,
        device=device,
        amp_dtype=amp_dtype(cfg.fast, device, method_cls),
        seed=cfg.seed,
    )
    method.net = net  # attacks run on the unwrapped (uncompiled) model
    loader = make_train_loader(
        bundle, batch_size=cfg.batch_size, seed=cfg.seed, device=device, num_workers=cfg.data.loader_workers
    )
    comp = Components(cfg, bundle, net, model, optimizer, method, loader, device)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        method.load_state_dict(resume.get("method", {}))
        comp.start_epoch = int(resume["epoch"])
        comp.history = list(resume.get("history", []))
    return comp


def checkpoint_state(comp: Components, epoch: int) -> dict[str, Any]:
    """Everything needed to resume after ``epoch`` completed epochs (CPU tensors)."""
    return {
        "config": to_dict(comp.cfg),
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in comp.net.state_dict().items()},
        "optimizer": comp.optimizer.state_dict(),
        "method": comp.method.state_dict(),
        "history": comp.history,
    }


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=home(device))
    dist.all_reduce(t)
    return t.tolist()


def monitor(comp: Components) -> dict[str, float]:
    """Clean and PGD accuracy on the first ``monitor.n`` validation images (test images when
    there is no validation split; rank 0)."""
    m = comp.cfg.monitor
    x, y = comp.bundle.val_tensors(m.n) if comp.bundle.has_val else comp.bundle.test_tensors(m.n)
    net = comp.net
    eps = comp.cfg.eps
    gen = generator(comp.device, comp.cfg.seed)

    def attack(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return pgd_linf(net, xb, yb, eps=eps, steps=m.pgd_steps, step_size=eps / 4, generator=gen)

    x_adv = batched(attack, x, y, batch_size=256, device=comp.device)
    return {
        "monitor_clean_acc": accuracy(net, x, y),
        "monitor_pgd_acc": accuracy(net, x_adv, y),
        "monitor_split": "val" if comp.bundle.has_val else "test",
    }


def train_epoch(comp: Components, epoch: int) -> dict[str, Any]:
    """One pass over the training data. Returns this epoch's metrics (averaged across ranks)."""
    cfg = comp.cfg
    opt_cfg = cfg.optim
    optimizers = [comp.optimizer] + comp.method.extra_optimizers()
    set_loader_epoch(comp.loader, epoch)
    steps = len(comp.loader)
    loss_sum = torch.zeros((), device=comp.device)
    correct = torch.zeros((), device=comp.device)
    if comp.device.type == "cuda":
        torch.cuda.synchronize(comp.device)
    t0 = time.perf_counter()
    with UsageSampler(comp.device) as usage:
        wait = _run_steps(comp, epoch, steps, optimizers, opt_cfg, loss_sum, correct)
    seen = int(wait.pop("seen"))
    if comp.device.type == "cuda":
        torch.cuda.synchronize(comp.device)
    elapsed = time.perf_counter() - t0
    loss_total, correct_total, seen_total, slowest = _all_reduce_sum(
        [loss_sum.item(), correct.item(), float(seen), elapsed], comp.device
    )
    rank, world = dist_info()
    loss = loss_total / max(seen_total, 1)
    if not math.isfinite(loss):
        raise DivergedError(epoch + 1, loss)
    metrics: dict[str, Any] = {
        "epoch": epoch + 1,
        "loss": loss,
        "train_acc": correct_total / max(seen_total, 1),
        "lr": comp.optimizer.param_groups[0]["lr"],
        "epoch_time_s": slowest / world,
        "images_per_s": seen_total / max(slowest / world, 1e-9),
    }
    metrics.update(per_worker({**usage.means(), "loader_wait_s": wait["loader_wait_s"]}, rank, world))
    metrics["precision"] = "bf16" if comp.method.amp_dtype == torch.bfloat16 else "fp32"  # of the training forwards
    metrics.update(comp.method.epoch_metrics())
    return metrics


def _run_steps(comp: Components, epoch: int, steps: int, optimizers, opt_cfg, loss_sum, correct) -> dict[str, float]:
    """The epoch's steps (sums accumulated on the device into ``loss_sum`` and ``correct``); the
    images seen and the seconds spent waiting for the data loader."""
    cfg, seen, wait = comp.cfg, 0, 0.0
    batches = iter(comp.loader)
    for i in range(steps):
        t_wait = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        wait += time.perf_counter() - t_wait
        x = x.to(comp.device, non_blocking=True)
        y = y.to(comp.device, non_blocking=True)
        set_lr(optimizers, lr_factor(opt_cfg, cfg.epochs, epoch + i / max(steps, 1)), opt_cfg)
        try:
            out = comp.method.train_step(x, y)
        except (ValueError, RuntimeError) as e:
            # a diverged model can make a method's own step raise before the loss is checked
            # (SPROUT: beta turns NaN with the loss, and the next Dirichlet refuses it)
            if not torch.isfinite(loss_sum) or not all(torch.isfinite(p).all() for p in comp.net.parameters()):
                raise DivergedError(epoch + 1, float("nan")) from e
            raise
        # accumulate on the device: no host sync per step, no autograd graph kept alive
        loss_sum += out["loss"].float() * len(y)
        correct += (out["logits"].argmax(1) == y).sum()
        seen += len(y)
    return {"seen": seen, "loader_wait_s": wait}


def fit(
    comp: Components, *, on_epoch_end: EpochCallback | None = None, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Train from ``comp.start_epoch`` to ``cfg.epochs``. After each epoch, ``on_epoch_end``
    gets the metrics and (on rank 0) a function that builds the checkpoint state."""
    cfg = comp.cfg
    rank, _ = dist_info()
    for epoch in range(comp.start_epoch, cfg.epochs):
        metrics = train_epoch(comp, epoch)
        if rank == 0 and cfg.monitor.every and ((epoch + 1) % cfg.monitor.every == 0 or epoch + 1 == cfg.epochs):
            t0 = time.perf_counter()
            metrics.update(monitor(comp))
            metrics["monitor_time_s"] = time.perf_counter() - t0  # compute beside the epoch's steps
        comp.history.append(metrics)
        if log is not None and rank == 0:
            log(format_metrics(metrics))
        if on_epoch_end is not None:
            on_epoch_end(metrics, (lambda e=epoch: checkpoint_state(comp, e + 1)) if rank == 0 else None)
    return comp.history


def format_metrics(m: dict[str, Any]) -> str:
    parts = [f"epoch {m['epoch']}"]
    for k in ("loss", "train_acc", "monitor_clean_acc", "monitor_pgd_acc", "lr", "epoch_time_s", "images_per_s"):
        if k in m:
            v = m[k]
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)
