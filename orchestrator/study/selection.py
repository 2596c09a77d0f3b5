"""Which trials of a stage are its finalists, the ones certified on the test split: for a
search, the Pareto set of its validation objectives; for a grid, every completed trial. Nothing
measured on the test split takes part in the choice."""

from __future__ import annotations

from typing import Any

from ..record import TrialStatus
from .intervals import finite
from .spec import StageSpec

SELECTED_ON_VALIDATION = "validation"
EVERY_TRIAL = "grid (every trial)"
EVALUATED = "evaluation stage (every checkpoint)"


def pareto(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (every objective to be maximised)."""

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def mark_finalists(
    rows: list[dict[str, Any]], objectives: list[str], modes: list[str], k: int, by_seeds: bool = False
) -> None:
    """Mark a selecting stage's finalists, chosen on its validation objectives only: the Pareto
    set of the completed points (for a single objective: the best, and any point tied with it),
    at most ``k`` of them by the last objective, plus the paper-default point. A point is a
    trial, or with ``by_seeds`` the trials of one point across seeds (``seed_group``), scored by
    their mean and counted only when every one of them completed; all of them are finalists."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    units: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        units.setdefault((by_seeds and r.get("seed_group")) or r["trial_id"], []).append(r)

    def usable(members):
        return all(
            m["status"] == TrialStatus.COMPLETED and all(finite(m["metrics"].get(o)) for o in objectives)
            for m in members
        )

    done = {key: members for key, members in units.items() if usable(members)}
    keys = list(done)
    points = [
        tuple(sg * sum(m["metrics"][o] for m in done[key]) / len(done[key]) for sg, o in zip(sign, objectives))
        for key in keys
    ]
    front = sorted(pareto(points), key=lambda i: (-points[i][-1], keys[i]))[:k]
    chosen = {keys[i] for i in front}
    for key, members in units.items():
        default = key in done and any(m.get("paper_default") for m in members)
        for r in members:
            r["finalist"] = key in chosen or default
            r["selected_on"] = SELECTED_ON_VALIDATION


def select(rows: list[dict[str, Any]], stage: StageSpec) -> list[dict[str, Any]]:
    """Mark the stage's finalists in ``rows`` and return them (sorted by trial id)."""
    if stage.search.selects:
        mark_finalists(
            rows, stage.search.finalist_metrics, stage.search.modes, stage.certify.top_k, bool(stage.search.seeds)
        )
    else:
        for r in rows:
            r["finalist"] = r["status"] == TrialStatus.COMPLETED
            r["selected_on"] = EVALUATED if stage.evaluates else EVERY_TRIAL
    return [r for r in rows if r["finalist"]]
