"""Paired tests between certified trials on the same test images: is the best trial better than
the paper's defaults, or than the runner-up? McNemar's exact test on their per-image worst case
(``orchestrator.study.mcnemar``), in the console, the report and ``summary.json``."""

from __future__ import annotations

from typing import Any

from ..study import TEST, mcnemar

ALPHA = 0.05  # a difference is called distinguishable below this two-sided p-value (no correction)


def _score(r: dict) -> tuple:
    return (-(r["metrics"].get(TEST + "robust_acc") or 0.0), r["trial_id"])


def _pairs(done: list[dict]) -> list[tuple[dict, dict, str]]:
    """Each certified trial against the paper-default one, and the best (test worst case) against
    the runner-up, each pair once."""
    pairs: list[tuple[dict, dict, str]] = []
    default = next((r for r in done if r.get("paper_default")), None)
    if default is not None:
        pairs += [(r, default, "paper defaults") for r in sorted(done, key=_score) if r is not default]
    best, second = sorted(done, key=_score)[:2]
    if not any({a["trial_id"], b["trial_id"]} == {best["trial_id"], second["trial_id"]} for a, b, _ in pairs):
        pairs.append((best, second, "runner-up"))
    return pairs


def paired_tests(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage with at least two certified trials: McNemar's exact test for every pair a reader
    compares, with its verdict."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        done = [r for r in rows if r["stage"] == stage and r.get("certified") and r.get("worst_case_per_image")]
        if len(done) < 2:
            continue
        for a, b, against in _pairs(done):
            t = mcnemar(a["worst_case_per_image"], b["worst_case_per_image"])
            out.append({"stage": stage, "a": a["trial_id"], "b": b["trial_id"], "against": against, **t,
                        "verdict": verdict(a["trial_id"], b["trial_id"], against, t)})  # fmt: skip
    return out


def verdict(a: str, b: str, against: str, t: dict) -> str:
    """ "b486bd38 vs paper defaults (077e39ae): +5.0 points, p = 0.3, not distinguishable on 100 images"."""
    said = "distinguishable" if t["p_value"] < ALPHA else "not distinguishable"
    return (
        f"{a} vs {against} ({b}): {100 * t['difference']:+.1f} points, p = {t['p_value']:.2g}, {said} on "
        f"{t['n']} images (McNemar, exact; worst case per image)"
    )
