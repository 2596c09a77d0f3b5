"""The eps curve: PGD (and C&W-L-inf, AutoAttack) accuracy at several eps."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ...schema import check
from ..context import EvalContext, Summary, accuracy, check_n
from ..registry import register_attack
from . import autoattack as _aa  # called through the module: one place to wrap AutoAttack (tests spy on it)
from .pgd import pgd_key


@dataclass(frozen=True)
class CurveBudget:
    multiples: tuple[float, ...] = ()  # eps multiples (0 included for the eps-0 check); empty = off
    n: int | None = None  # images (None = the protocol's)
    autoattack: bool = False  # AutoAttack at every point too
    pgd_steps: int = 20
    cw_steps: int = 0  # C&W-L-inf (PGD on the capped margin loss, kappa 50) at every point too; 0 = not

    def validate(self, where: str) -> None:
        check(all(m >= 0 for m in self.multiples), where, "multiples", "numbers >= 0", self.multiples)
        check(self.pgd_steps >= 1, where, "pgd_steps", "an integer >= 1", self.pgd_steps)
        check(self.cw_steps >= 0, where, "cw_steps", "an integer >= 0", self.cw_steps)
        check_n(where, self.n)

    def enabled(self) -> bool:
        return bool(self.multiples) and self.n != 0


def _curve_smoke(b: CurveBudget) -> dict[str, Any]:
    """PGD on 40 images; with AutoAttack, on AutoAttack's smoke images and only at eps 0, the
    protocol's eps (its own AutoAttack run, reused) and above: a point below the protocol's eps
    is a whole AutoAttack run on every clean-correct image, the cost of a smoke trial twice over."""
    if not b.autoattack:
        return {"n": 40, **({"cw_steps": min(b.cw_steps, 10)} if b.cw_steps else {})}
    return {"n": 10, "multiples": [m for m in b.multiples if m == 0 or m >= 1]}


def _curve_eps(ctx_eps: float, b: CurveBudget) -> list[float]:
    return [round(c * ctx_eps, 6) for c in b.multiples]


def _summarize_curve(s: Summary, b: CurveBudget) -> None:
    eps = _curve_eps(s.eps, b)
    s.r["curve_eps"] = eps
    s.r["curve_pgd_acc"] = [s.acc(f"curve_pgd@{e:.4g}") for e in eps]
    m = len(s.per_image[f"curve_pgd@{eps[0]:.4g}"]) if eps else 0
    s.extra["curve_n"] = m
    s.extra["curve_clean_acc"] = accuracy(s.clean[:m])
    if "curve_eps0_changed" in s.per_image:
        s.extra["eps0_changed"] = int(s.per_image["curve_eps0_changed"].sum())
    if any(f"curve_cw@{e:.4g}" in s.per_image for e in eps):
        s.r["curve_cw_linf_acc"] = [s.acc(f"curve_cw@{e:.4g}") for e in eps]
    if any(f"curve_aa@{e:.4g}" in s.per_image for e in eps):
        s.r["curve_autoattack_acc"] = [s.acc(f"curve_aa@{e:.4g}") for e in eps]


@register_attack(
    "curve",
    CurveBudget,
    summarize=_summarize_curve,
    metrics=lambda b: (
        ["curve_eps", "curve_pgd_acc"]
        + (["curve_cw_linf_acc"] if b.cw_steps else [])
        + (["curve_autoattack_acc"] if b.autoattack else [])
    ),
    columns=lambda b: [],
    smoke=lambda b: _curve_smoke(b),
)
def run_curve(ctx: EvalContext, b: CurveBudget) -> None:
    """Accuracy against eps: PGD (and AutoAttack if asked) at each multiple of eps.

    PGD runs at every point independently (a curve that rises with eps is a masking sign).
    AutoAttack runs from the smallest eps up, each point on the images no smaller eps broke
    (an adversarial input within a smaller ball is one within the larger), and reuses the
    protocol's own AutoAttack run at the protocol's eps."""
    xs, ys = ctx.first(b.n)
    clean = ctx.per_image["clean"][: len(ys)]
    t0 = time.perf_counter()
    for e in _curve_eps(ctx.eps, b):
        name = f"curve_pgd@{e:.4g}"
        if e == 0:  # the whole attack pipeline with a zero budget: it must give back the clean input
            x0 = ctx.batched(name, ctx.pgd(b.pgd_steps, eps=0.0), xs, ys)
            ctx.bound(name, x0, xs, 0.0)
            at0 = ctx.correct_on(x0, ys)
            ctx.per_image["curve_eps0_changed"] = at0 != clean
            ctx.per_image[name] = at0 & clean
        elif e == ctx.eps and pgd_key(b.pgd_steps, 1) in ctx.per_image:
            ctx.per_image[name] = ctx.per_image[pgd_key(b.pgd_steps, 1)][: len(ys)]  # the same attack already ran
        else:
            ctx.attack(name, ctx.pgd(b.pgd_steps, eps=e), xs, ys, eps=e)
        if b.cw_steps and e == 0:
            ctx.per_image[f"curve_cw@{e:.4g}"] = ctx.per_image[name]  # no budget: the clean answer
        elif b.cw_steps:
            ctx.attack(f"curve_cw@{e:.4g}", ctx.pgd(b.cw_steps, eps=e, loss="cw", kappa=50.0), xs, ys, eps=e)
    if b.autoattack and ctx.protocol is not None and ctx.protocol.budget("autoattack") is not None:
        standing = clean.clone()  # robust at every smaller eps of the curve so far
        for e in sorted(set(_curve_eps(ctx.eps, b))):
            if e > 0:
                standing &= _aa_at(ctx, xs, ys, e, standing)
            ctx.per_image[f"curve_aa@{e:.4g}"] = standing.clone()
    ctx.shard.seconds["curve"] = time.perf_counter() - t0


def _aa_at(ctx: EvalContext, xs: torch.Tensor, ys: torch.Tensor, e: float, todo: torch.Tensor) -> torch.Tensor:
    """Per image of ``xs``: not broken by AutoAttack at ``e``, attacking only where ``todo``
    (elsewhere the answer is already False or known). The protocol's own AutoAttack run counts
    for the images it covered when ``e`` is the protocol's eps."""
    ok = torch.zeros(len(ys), dtype=torch.bool)
    todo = todo.clone()
    have = ctx.per_image.get("autoattack")
    if e == ctx.eps and have is not None:
        k = min(len(have), len(ys))
        ok[:k] = have[:k]
        todo[:k] = False
    idx = todo.nonzero().squeeze(1)
    if len(idx):
        t0 = time.perf_counter()
        x_aa, _, _ = _aa.autoattack(
            ctx.model, xs[idx], ys[idx], eps=e, seed=ctx.seed + ctx.start, device=ctx.device, batch_size=ctx.batch_size
        )
        ctx.bound(f"curve_autoattack@{e:.4g}", x_aa, xs[idx], e)
        ok[idx] = ctx.correct_on(x_aa, ys[idx])
        ctx.shard.seconds[f"curve_autoattack@{e:.4g}"] = time.perf_counter() - t0
        ctx.say(
            f"  curve_autoattack@{e:.4g} (n={len(idx)}): {accuracy(ok & ctx.per_image['clean'][: len(ys)]):.4f} "
            f"({ctx.shard.seconds[f'curve_autoattack@{e:.4g}']:.1f}s)"
        )
    return ok
