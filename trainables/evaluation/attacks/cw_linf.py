"""C&W-L-inf: PGD on the capped margin loss."""

from __future__ import annotations

from dataclasses import dataclass

from ...schema import check
from ..context import EvalContext, Summary
from ..registry import register_attack


@dataclass(frozen=True)
class CWLinfBudget:
    steps: int = 30  # PGD steps on the C&W margin loss; 0 = off
    kappa: float = 50.0  # the margin is capped at kappa (Madry's C&W loss), in logit units

    def validate(self, where: str) -> None:
        check(self.steps >= 0, where, "steps", "an integer >= 0", self.steps)
        check(self.kappa > 0, where, "kappa", "a number > 0", self.kappa)

    def enabled(self) -> bool:
        return self.steps > 0


def _summarize_cw_linf(s: Summary, b: CWLinfBudget) -> None:
    s.r["cw_linf_acc"] = s.acc("cw_linf")


@register_attack(
    "cw_linf",
    CWLinfBudget,
    summarize=_summarize_cw_linf,
    metrics=lambda b: ["cw_linf_acc"],
    columns=lambda b: [("C&W-Linf", "cw_linf_acc")],
    worst_case=lambda b: ["cw_linf_acc"],
    smoke=lambda b: {"steps": min(b.steps, 10)},
)
def run_cw_linf(ctx: EvalContext, b: CWLinfBudget) -> None:
    """PGD-L-inf on the C&W margin loss max_{j != y} z_j - z_y."""
    ctx.attack("cw_linf", ctx.pgd(b.steps, loss="cw", kappa=b.kappa))
