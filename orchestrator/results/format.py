"""How numbers read in tables, on the console and in reports: one set of formatters."""

from __future__ import annotations

import math
from typing import Any

from ..study import count_of, finite, wilson


def pct(v: Any, digits: int = 1) -> str:
    """An accuracy in % ("71.0"); "-" when it is missing or not a number."""
    if not finite(v):
        return "-"
    return f"{100 * v:.{digits}f}"


def _with_interval(metrics: dict, key: str, show) -> str:
    """``show(accuracy, image count, Wilson 95 % low, high)``; the bare % without a count."""
    v, n = metrics.get(key), count_of(key, metrics)
    if not finite(v) or not n:
        return pct(v)
    return show(v, n, *wilson(v, n))


def pm(metrics: dict, key: str) -> str:
    """An accuracy in % with its 95 % interval's half-width from its image count ("71.0±8.9")."""
    return _with_interval(metrics, key, lambda v, n, lo, hi: f"{100 * v:.1f}±{100 * (hi - lo) / 2:.0f}")


def ci(metrics: dict, key: str) -> str:
    """An accuracy in % with its 95 % Wilson interval and image count ("50.0 % [23.7, 76.3] on 10")."""
    return _with_interval(metrics, key, lambda v, n, lo, hi: f"{100 * v:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] on {n}")


def num(v: Any, fmt: str = "{:.3g}", nan: str = "nan") -> str:
    """A number in a few digits; "-" when missing, ``nan`` when not a number."""
    if v is None:
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return nan
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def short(v: Any) -> str:
    """A searched value on the console."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
