"""PGD at a large eps, where every model should be near 0 %."""

from __future__ import annotations

from dataclasses import dataclass

from ...schema import check
from ..context import EvalContext, Summary, check_n
from ..registry import register_attack


@dataclass(frozen=True)
class LargeEpsBudget:
    eps: float = 0.5  # PGD here should reach ~0 accuracy (a masking check); 0 = off
    steps: int = 20
    n: int | None = None  # images (None = the protocol's)

    def validate(self, where: str) -> None:
        check(0 <= self.eps <= 1, where, "eps", "a number in [0, 1]", self.eps)
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)
        check_n(where, self.n)

    def enabled(self) -> bool:
        return self.eps > 0 and self.n != 0


def _summarize_large_eps(s: Summary, b: LargeEpsBudget) -> None:
    s.r["large_eps"] = b.eps
    s.r["large_eps_acc"] = s.acc("large_eps")


@register_attack(
    "large_eps",
    LargeEpsBudget,
    summarize=_summarize_large_eps,
    metrics=lambda b: ["large_eps", "large_eps_acc"],
    columns=lambda b: [],
)
def run_large_eps(ctx: EvalContext, b: LargeEpsBudget) -> None:
    """PGD at a large eps (step eps/4): an undefended or a robust model alike should reach ~0."""
    xs, ys = ctx.first(b.n)
    ctx.attack("large_eps", ctx.pgd(b.steps, eps=b.eps, step_size=b.eps / 4), xs, ys, eps=b.eps)
