"""Invariance: accuracy under rotation, brightness, contrast and grayscale."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...attacks import brightness, contrast, grayscale, rotate
from ..context import EvalContext, Summary, accuracy
from ..registry import register_attack


@dataclass(frozen=True)
class InvarianceBudget:
    rotation_deg: float = 10.0  # the SPROUT paper's Table 5 transformations
    brightness: float = 1.5
    contrast: float = 2.0

    def enabled(self) -> bool:
        return True


INVARIANCE_KEYS = ["inv_rotation_acc", "inv_brightness_acc", "inv_contrast_acc", "inv_grayscale_acc"]


def _summarize_invariance(s: Summary, b: InvarianceBudget) -> None:
    for key in INVARIANCE_KEYS:
        s.r[key] = s.acc(key[:-4])


@register_attack(
    "invariance",
    InvarianceBudget,
    summarize=_summarize_invariance,
    metrics=lambda b: list(INVARIANCE_KEYS),
    columns=lambda b: [(k[4:-4], k) for k in INVARIANCE_KEYS],
)
def run_invariance(ctx: EvalContext, b: InvarianceBudget) -> None:
    """Accuracy under rotation, brightness, contrast and grayscale (no attack)."""
    t0 = time.perf_counter()
    for name, fn in (
        ("rotation", lambda t: rotate(t, b.rotation_deg)),
        ("brightness", lambda t: brightness(t, b.brightness)),
        ("contrast", lambda t: contrast(t, b.contrast)),
        ("grayscale", grayscale),
    ):
        ctx.per_image[f"inv_{name}"] = ctx.correct_on(fn(ctx.x), ctx.y)
    ctx.shard.seconds["invariance"] = time.perf_counter() - t0
    ctx.say(
        "  invariance: "
        + " ".join(f"{k[4:-4]} {accuracy(ctx.per_image[k[:-4]]):.4f}" for k in INVARIANCE_KEYS)
        + f" ({ctx.shard.seconds['invariance']:.1f}s)"
    )
