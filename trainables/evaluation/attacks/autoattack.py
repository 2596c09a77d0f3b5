"""AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) through pyautoattack."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import torch
from torch import nn

from ...attacks import bn_mode
from ..context import EvalContext, Summary, accuracy, check_n
from ..registry import register_attack


@dataclass(frozen=True)
class AutoAttackBudget:
    n: int | None = None  # images (None = the protocol's; 0 = off)

    def validate(self, where: str) -> None:
        check_n(where, self.n)

    def enabled(self) -> bool:
        return self.n != 0


class _AALog(logging.Handler):
    """Collects AutoAttack's log: its per-attack robust accuracy, its warnings, every line."""

    pattern = re.compile(r"robust accuracy after ([A-Z\-]+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.steps: dict[str, float] = {}
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.lines.append(msg)
        m = self.pattern.search(msg)
        if m:
            self.steps[m.group(1).lower()] = float(m.group(2)) / 100
        elif record.levelno >= logging.WARNING:
            self.warnings.append(msg)


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    seed: int,
    device: torch.device,
    batch_size: int,
    log: _AALog | None = None,
) -> tuple[torch.Tensor, dict[str, float], list[str]]:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), from ``pyautoattack``.
    Returns adversarial inputs (CPU), robust accuracy after each attack, and its warnings."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler = log or _AALog()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        # AutoAttack seeds torch's global generators with ``seed``: run it on a fork of them, so
        # that evaluating a model does not change the random stream of whatever runs next
        devices = [device] if device.type == "cuda" else []
        with (
            torch.random.fork_rng(devices=devices),
            bn_mode(model, "eval"),
            torch.autocast(device_type=device.type, enabled=False),
        ):
            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)
            _fewer_targets(aa, model, x[:1].to(device), handler)
            x_adv, _ = aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return x_adv.detach().cpu(), handler.steps, handler.warnings


def _fewer_targets(aa, model: nn.Module, x1: torch.Tensor, log: _AALog) -> None:
    """The standard version's targeted attacks (APGD-T, FAB-T) try the 9 most likely wrong
    classes; a data set of fewer than 10 classes has only ``classes - 1`` of them (the standard
    version fails on it otherwise). Said in the result's warnings."""
    with torch.no_grad():
        classes = model(x1).shape[1]
    if classes >= 10:
        return
    aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = max(1, classes - 1)
    log.warnings.append(f"{classes} classes: APGD-T and FAB-T target {classes - 1} classes (standard: 9)")


AA_STEPS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _summarize_aa(s: Summary, b: AutoAttackBudget) -> None:
    ok = s.per_image["autoattack"]
    m = len(ok)
    s.r["autoattack_acc"] = accuracy(ok)
    s.r["autoattack_n"] = m
    steps = {
        k: s.shard.counts[f"autoattack_after/{k}"] / m
        for k in AA_STEPS
        if f"autoattack_after/{k}" in s.shard.counts and m
    }
    for k, v in steps.items():
        s.r[f"autoattack_after_{k.replace('-', '_')}_acc"] = v
    if s.shard.notes.get("autoattack_warnings"):
        s.r["autoattack_warnings"] = sorted(set(s.shard.notes["autoattack_warnings"]))
    s.extra["autoattack_steps"] = steps
    s.extra["autoattack_n"] = m
    if "pgd20" in s.per_image:
        s.extra["autoattack_pgd20_acc"] = accuracy(s.per_image["pgd20"][:m])


@register_attack(
    "autoattack",
    AutoAttackBudget,
    summarize=_summarize_aa,
    metrics=lambda b: [
        "autoattack_acc",
        "autoattack_n",
        "autoattack_after_apgd_ce_acc",
        "autoattack_after_apgd_t_acc",
        "autoattack_after_fab_t_acc",
        "autoattack_after_square_acc",
    ],
    columns=lambda b: [("AutoAttack", "autoattack_acc")],
    worst_case=lambda b: ["autoattack_acc"],
    smoke=lambda b: {"n": 10},
)
def run_aa(ctx: EvalContext, b: AutoAttackBudget) -> None:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    log = _AALog()
    if len(ys):
        # its random draws follow its seed and the images' shape: a shard's own seed
        x_aa, steps, warnings = autoattack(
            ctx.model,
            xs,
            ys,
            eps=ctx.eps,
            seed=ctx.seed + ctx.start,
            device=ctx.device,
            batch_size=ctx.batch_size,
            log=log,
        )
    else:
        x_aa, steps, warnings = xs.clone(), {}, []
    ctx.bound("autoattack", x_aa, xs, ctx.eps)
    ctx.per_image["autoattack"] = ctx.robust(x_aa, ys)
    for k, v in steps.items():  # AutoAttack logs percentages of the images it was given: counts add up
        ctx.shard.counts[f"autoattack_after/{k}"] = round(v * len(ys))
    ctx.shard.notes["autoattack_warnings"] = warnings
    ctx.shard.notes["autoattack_log"] = [f"[images {ctx.start}-{ctx.start + len(ys) - 1}] {line}" for line in log.lines]
    if ctx.keep_adversarial:
        ctx.shard.adversarial = {"x": x_aa, "y": ys.clone(), "index": torch.arange(ctx.start, ctx.start + len(ys))}
    ctx.shard.seconds["autoattack"] = time.perf_counter() - t0
    if len(ys):
        ctx.say(
            f"  autoattack (n={len(ys)}): {accuracy(ctx.per_image['autoattack']):.4f} ({ctx.shard.seconds['autoattack']:.1f}s)"
        )
