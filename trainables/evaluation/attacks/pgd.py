"""PGD runs (steps x restarts) at the protocol's eps, keeping each image's first fooling iterate."""

from __future__ import annotations

from dataclasses import dataclass

from ...schema import check
from ..context import EvalContext, Summary
from ..registry import register_attack


def pgd_key(steps: int, restarts: int) -> str:
    return f"pgd{steps}" if restarts == 1 else f"pgd{steps}x{restarts}"


def pgd_label(steps: int, restarts: int) -> str:
    return f"PGD-{steps}" if restarts == 1 else f"{restarts}xPGD-{steps}"


@dataclass(frozen=True)
class PGDBudget:
    runs: tuple[tuple[int, int], ...] = ((20, 1),)  # (steps, restarts) -> pgd{steps}[x{restarts}]_acc

    def validate(self, where: str) -> None:
        check(
            all(len(r) == 2 and r[0] >= 1 and r[1] >= 1 for r in self.runs),
            where,
            "runs",
            "pairs (steps >= 1, restarts >= 1)",
            self.runs,
        )

    def enabled(self) -> bool:
        return bool(self.runs)


def _pgd_keys(b: PGDBudget) -> list[str]:
    return [f"{pgd_key(s, r)}_acc" for s, r in b.runs]


def _summarize_pgd(s: Summary, b: PGDBudget) -> None:
    runs = s.extra.setdefault("pgd_runs", {})
    for steps, restarts in b.runs:
        key = pgd_key(steps, restarts)
        s.r[f"{key}_acc"] = runs[(steps, restarts)] = s.acc(key)


@register_attack(
    "pgd",
    PGDBudget,
    summarize=_summarize_pgd,
    metrics=_pgd_keys,
    worst_case=_pgd_keys,
    columns=lambda b: [(pgd_label(s, r), f"{pgd_key(s, r)}_acc") for s, r in b.runs],
    smoke=lambda b: {"runs": [list(x) for x in sorted({(min(s, 40), min(r, 2)) for s, r in b.runs})]},
)
def run_pgd(ctx: EvalContext, b: PGDBudget) -> None:
    """PGD-L-inf with a uniform random start in the eps ball, step step_frac x eps, per run of
    (steps, restarts); an image counts as broken if any restart breaks it."""
    for steps, restarts in b.runs:
        ctx.attack(pgd_key(steps, restarts), ctx.pgd(steps, restarts))
