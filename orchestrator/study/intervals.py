"""95 % intervals for accuracies measured on a finite number of images (no torch)."""

from __future__ import annotations

import math


def finite(v) -> bool:
    """A real number (not a flag, not NaN or infinite): what an accuracy must be to count."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


Z95 = 1.959964  # the standard normal's 97.5 % quantile


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy ``p`` measured on ``n`` images: about ±9 points
    at p = 0.7 on 100 images, ±0.9 on 10,000. Unlike p ± z·sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at p = 0 or 1."""
    if n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# which image count each reported accuracy was measured on (the evaluation's keys)
def count_of(metric: str, metrics: dict) -> int | None:
    """The number of images behind ``metric`` in a trial's metrics, or None when unknown. A
    split's prefix (``val/``, ``test/``) is kept: ``test/pgd20_acc`` counts ``test/n_eval``."""
    head, _, name = metric.rpartition("/")
    prefix = head + "/" if head else ""
    if name in ("robust_acc", "robust_acc_min") or name.startswith("wc_"):
        key = "robust_acc_min_n"  # the worst case, and every number beside it on its images
    elif name.startswith("autoattack"):
        key = "autoattack_n"
    elif name.startswith("cw_l2"):
        key = "cw_l2_n"
    elif name.endswith("_acc") and not name.startswith(("monitor_", "train_", "curve_", "large_eps")):
        key = "n_eval"
    else:
        return None
    n = metrics.get(prefix + key)
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None


def intervals(metrics: dict) -> dict[str, list[float]]:
    """``{metric: [low, high]}`` for every accuracy in ``metrics`` whose image count is known."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, float) and k.endswith("_acc") and math.isfinite(v):
            n = count_of(k, metrics)
            if n:
                out[k] = [round(x, 4) for x in wilson(v, n)]
    return out
