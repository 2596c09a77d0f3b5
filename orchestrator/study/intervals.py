"""95 % intervals for accuracies measured on a finite number of images, and paired tests of two
models on the same images (scipy; no torch)."""

from __future__ import annotations

import math


def finite(v) -> bool:
    """A real number (not a flag, not NaN or infinite): what an accuracy must be to count."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wilson(p: float, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy ``p`` measured on ``n`` images (scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")``, k = p·n correct): about ±9 points at
    p = 0.7 on 100 images, ±0.9 on 10,000. Unlike p ± 1.96·sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at p = 0 or 1."""
    if n <= 0 or not math.isfinite(p):
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(round(p * n)), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def mcnemar(a: str, b: str) -> dict[str, float | int]:
    """McNemar's exact test of two models on the same images, from their per-image results
    (``"1"`` right, ``"0"`` wrong, the same images in the same order): only the discordant images
    count, ``a_only`` right under A alone and ``b_only`` under B alone; the two-sided p-value is
    scipy's ``binomtest(a_only, a_only + b_only, 0.5)``."""
    from scipy.stats import binomtest

    m = min(len(a), len(b))
    a_only = sum(1 for x, y in zip(a[:m], b[:m]) if x == "1" and y == "0")
    b_only = sum(1 for x, y in zip(a[:m], b[:m]) if x == "0" and y == "1")
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"n": m, "a_only": a_only, "b_only": b_only, "p_value": float(p),
            "difference": (a_only - b_only) / m if m else float("nan")}  # fmt: skip


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
