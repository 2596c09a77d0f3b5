"""The evaluation's attacks, one module each (budget, run on one shard, summary of the union,
registration). Importing this package registers them, in the order of evaluation: later attacks
reuse what earlier ones measured (the curve reuses PGD-20 and AutoAttack, AutoAttack's summary
compares with PGD-20). A new attack is a module here and an import line below."""

from __future__ import annotations

from ..registry import ATTACKS, Attack, attack_order, register_attack
from . import autoattack, curve, cw_l2, cw_linf, fgsm, invariance, large_eps, pgd, targeted, transfer  # noqa: F401,I001 - order matters

__all__ = ["ATTACKS", "Attack", "attack_order", "register_attack"]
