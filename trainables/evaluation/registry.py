"""The evaluation's attack registry: each entry has a name, a typed budget, a run function
that measures one shard per image, a summary that turns the union of the shards' per-image
results into metrics, and the metric keys it writes. One module per attack in
``trainables.evaluation.attacks`` registers itself with ``@register_attack``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..registry import Registry

if TYPE_CHECKING:
    from .context import EvalContext, Summary

Columns = list[tuple[str, str]]  # (table label, metric key)


@dataclass(frozen=True)
class Attack:
    name: str
    Budget: type  # frozen dataclass; ``enabled()`` says whether a budget runs the attack at all
    run: Callable[[EvalContext, Any], None]  # measures one shard, per image
    summarize: Callable[[Summary, Any], None]  # metrics from the union of the shards
    metrics: Callable[[Any], list[str]]  # keys written into the result
    columns: Callable[[Any], Columns]  # what a results table shows
    # keys whose per-image results count in the worst case (white-box L-inf at the protocol's eps)
    worst_case: Callable[[Any], list[str]]
    smoke: Callable[[Any], dict[str, Any]]  # budget fields that make it run in seconds
    doc: str


ATTACKS: Registry[Attack] = Registry("attack")


def attack_order() -> list[str]:
    """Registration order, which is the order of evaluation (later attacks reuse earlier ones)."""
    return ATTACKS.ordered()


def register_attack(
    name: str,
    Budget: type,
    *,
    summarize: Callable[[Summary, Any], None],
    metrics: Callable[[Any], list[str]],
    columns: Callable[[Any], Columns] | None = None,
    worst_case: Callable[[Any], list[str]] | None = None,
    smoke: Callable[[Any], dict[str, Any]] | None = None,
):
    def deco(run: Callable[[EvalContext, Any], None]):
        cols = columns or (lambda b: [(name, k) for k in metrics(b) if k.endswith("_acc")])
        ATTACKS.register(name)(
            Attack(
                name,
                Budget,
                run,
                summarize,
                metrics,
                cols,
                worst_case or (lambda b: []),
                smoke or (lambda b: {}),
                (run.__doc__ or "").strip(),
            )
        )
        return run

    return deco
