"""Transfer: PGD crafted on a source model, evaluated on the target."""

from __future__ import annotations

from dataclasses import dataclass

from ...schema import check
from ..context import EvalContext, Summary
from ..registry import register_attack
from .pgd import pgd_key


@dataclass(frozen=True)
class TransferBudget:
    steps: int = 20  # PGD steps on the source model

    def validate(self, where: str) -> None:
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)

    def enabled(self) -> bool:
        return True


def _summarize_transfer(s: Summary, b: TransferBudget) -> None:
    if "transfer" not in s.per_image:
        s.r["transfer_skipped"] = "no source model given"
        return
    s.r["transfer_acc"] = s.acc("transfer")
    s.extra["transfer_white_box_acc"] = s.acc(pgd_key(b.steps, 1))


@register_attack(
    "transfer",
    TransferBudget,
    summarize=_summarize_transfer,
    metrics=lambda b: ["transfer_acc"],
    columns=lambda b: [("transfer", "transfer_acc")],
    smoke=lambda b: {"steps": min(b.steps, 20)},
)
def run_transfer(ctx: EvalContext, b: TransferBudget) -> None:
    """PGD crafted on a source model (a natural one by default), evaluated on this one."""
    if ctx.transfer_source is None:
        ctx.say("  transfer: skipped (no source model given)")
        return
    ctx.transfer_source.to(ctx.device)
    ctx.attack("transfer", ctx.pgd(b.steps, net=ctx.transfer_source, last=True))
    if pgd_key(b.steps, 1) not in ctx.per_image:  # the white-box attack of the same strength, to compare
        ctx.attack(pgd_key(b.steps, 1), ctx.pgd(b.steps))
