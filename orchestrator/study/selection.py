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


def pareto(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (every objective to be maximised)."""

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def mark_finalists(rows: list[dict[str, Any]], objectives: list[str], modes: list[str], k: int) -> None:
    """Mark a selecting stage's finalists, chosen on its validation objectives only: the Pareto
    set of the completed trials (for a single objective: the best, and any trial tied with it),
    at most ``k`` of them by the last objective, plus the paper-default trial."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    done = [
        r for r in rows if r["status"] == TrialStatus.COMPLETED and all(finite(r["metrics"].get(o)) for o in objectives)
    ]
    points = [tuple(sg * r["metrics"][o] for sg, o in zip(sign, objectives)) for r in done]
    front = sorted(pareto(points), key=lambda i: (-points[i][-1], done[i]["trial_id"]))[:k]
    chosen = {done[i]["trial_id"] for i in front}
    for r in rows:
        r["finalist"] = r["trial_id"] in chosen or (bool(r.get("paper_default")) and r in done)
        r["selected_on"] = SELECTED_ON_VALIDATION


def select(rows: list[dict[str, Any]], stage: StageSpec) -> list[dict[str, Any]]:
    """Mark the stage's finalists in ``rows`` and return them (sorted by trial id)."""
    if stage.search.selects:
        mark_finalists(rows, stage.search.finalist_metrics, stage.search.modes, stage.certify.top_k)
    else:
        for r in rows:
            r["finalist"] = r["status"] == TrialStatus.COMPLETED
            r["selected_on"] = EVERY_TRIAL
    return [r for r in rows if r["finalist"]]
