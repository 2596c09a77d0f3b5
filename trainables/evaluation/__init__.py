"""Robustness evaluation: the attacks (one module each in ``attacks/``, registered in
evaluation order), named protocols (``protocols``), the gradient-masking checks (``masking``),
shards and their union (``shard``), and ``evaluate`` in ``runner`` (a library; the command is
``python -m trainables.evaluate``). No Ray.

Importing the package is cheap (no torch): the names below load their module when first used.
"""

from __future__ import annotations

from ..lazy import surface

__all__ = [
    "ATTACKS",
    "EVAL_KEYS",
    "PROTOCOLS",
    "Protocol",
    "Shard",
    "attack_order",
    "describe_flags",
    "evaluate",
    "evaluate_shard",
    "evaluation_size",
    "finish",
    "format_table",
    "get_protocol",
    "metric_keys",
    "protocol_eps",
    "run_checks",
    "smoke_overrides",
    "union",
    "worst_case_bits",
    "worst_case_keys",
]
_HOME = {
    "ATTACKS": "attacks",
    "attack_order": "attacks",
    "EVAL_KEYS": "keys",
    "metric_keys": "keys",
    "worst_case_keys": "keys",
    "PROTOCOLS": "protocols",
    "Protocol": "protocols",
    "get_protocol": "protocols",
    "smoke_overrides": "protocols",
    "describe_flags": "masking",
    "run_checks": "masking",
    "Shard": "shard",
    "union": "shard",
    "evaluate": "runner",
    "evaluate_shard": "runner",
    "evaluation_size": "runner",
    "finish": "runner",
    "format_table": "runner",
    "protocol_eps": "runner",
    "worst_case_bits": "runner",
}


__getattr__ = surface(__name__, _HOME)
