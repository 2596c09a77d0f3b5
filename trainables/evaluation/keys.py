"""The metric keys an evaluation writes: its attacks' and those every evaluation reports."""

from __future__ import annotations

from .attacks import ATTACKS

# what every evaluation reports besides its attacks' keys (trainables.evaluate)
EVAL_KEYS = (
    "clean_acc",
    "n_eval",
    "eps",
    "zero_grad_frac",
    "robust_acc_min",
    "robust_acc_min_n",
    "max_bound_violation",
    "eval_time_s",
)


def metric_keys(protocol) -> list[str]:
    """Every numeric key an evaluation under ``protocol`` reports."""
    return [*EVAL_KEYS, *(k for name, b in protocol.attacks for k in ATTACKS.get(name).metrics(b))]


def worst_case_keys(protocol) -> list[str]:
    """Metric keys of the white-box L-inf attacks at the protocol's eps: the attacks whose
    per-image results make the worst case (``robust_acc_min``)."""
    return [k for name, b in protocol.attacks for k in ATTACKS.get(name).worst_case(b)]
