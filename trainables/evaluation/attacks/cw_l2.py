"""C&W-L2: minimal L2 distances, accuracy at the data set's radius."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...attacks import cw_l2
from ...data import DATASETS
from ...schema import check
from ..context import EvalContext, Summary, accuracy, check_n
from ..registry import register_attack


@dataclass(frozen=True)
class CWL2Budget:
    search_steps: int = 3  # binary-search steps over the constant c; 0 = off
    iterations: int = 100  # Adam steps per search step
    radius: float | None = None  # report accuracy at this L2 radius (pixel units); None = the data set's
    n: int | None = None  # images (None = the protocol's)

    def validate(self, where: str) -> None:
        check(self.search_steps >= 0, where, "search_steps", "an integer >= 0", self.search_steps)
        check(self.iterations >= 1, where, "iterations", "an integer >= 1", self.iterations)
        if self.radius is not None:
            check(self.radius > 0, where, "radius", "a number > 0 or null (the data set's)", self.radius)
        check_n(where, self.n)

    def enabled(self) -> bool:
        return self.search_steps > 0 and self.n != 0


def _summarize_cw_l2(s: Summary, b: CWL2Budget) -> None:
    norms = s.per_image["cw_l2_norm"]
    radius = b.radius if b.radius is not None else DATASETS.get(s.dataset).cw_l2_radius
    s.r["cw_l2_acc"] = accuracy((norms > radius) & s.clean[: len(norms)])
    s.r["cw_l2_radius"] = radius
    s.r["cw_l2_n"] = len(norms)
    found = norms[torch.isfinite(norms) & (norms > 0)]
    s.r["cw_l2_median_norm"] = found.median().item() if len(found) else float("nan")


@register_attack(
    "cw_l2",
    CWL2Budget,
    summarize=_summarize_cw_l2,
    metrics=lambda b: ["cw_l2_acc", "cw_l2_radius", "cw_l2_n", "cw_l2_median_norm"],
    columns=lambda b: [("C&W-L2", "cw_l2_acc")],
    smoke=lambda b: {"n": 10, "iterations": min(b.iterations, 30), "search_steps": min(b.search_steps, 2)},
)
def run_cw_l2(ctx: EvalContext, b: CWL2Budget) -> None:
    """Carlini-Wagner L2 (minimal distance per image); robust at ``radius`` if none is found within it."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    norms = ctx.batched(
        "cw_l2",
        lambda xb, yb, gen: cw_l2(ctx.model, xb, yb, search_steps=b.search_steps, iterations=b.iterations, bn="eval")[
            :, None
        ],
        xs,
        ys,
    )
    ctx.per_image["cw_l2_norm"] = norms.squeeze(1).double() if len(ys) else torch.zeros(0, dtype=torch.float64)
    ctx.shard.seconds["cw_l2"] = time.perf_counter() - t0
    if len(ys):
        ctx.say(f"  cw_l2 (n={len(ys)}): {ctx.shard.seconds['cw_l2']:.1f}s")
