"""FGSM: one signed-gradient step at the protocol's eps."""

from __future__ import annotations

from dataclasses import dataclass

from ...attacks import pgd_linf
from ..context import EvalContext, Summary
from ..registry import register_attack


@dataclass(frozen=True)
class NoBudget:
    def enabled(self) -> bool:
        return True


def _summarize_fgsm(s: Summary, b: NoBudget) -> None:
    s.r["fgsm_acc"] = s.acc("fgsm")


@register_attack(
    "fgsm",
    NoBudget,
    summarize=_summarize_fgsm,
    metrics=lambda b: ["fgsm_acc"],
    columns=lambda b: [("FGSM", "fgsm_acc")],
    worst_case=lambda b: ["fgsm_acc"],
)
def run_fgsm(ctx: EvalContext, b: NoBudget) -> None:
    """One signed-gradient step of size eps from the clean input (the masking check's one-step attack)."""
    ctx.attack(
        "fgsm",
        lambda xb, yb, gen: pgd_linf(
            ctx.model, xb, yb, eps=ctx.eps, steps=1, step_size=ctx.eps, random_start=False, bn="eval"
        ),
    )
