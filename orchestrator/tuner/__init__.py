"""The Ray layers of a stage: the Tuner (``stage``, ``searchers``), the per-trial driver
(``driver``), the Ray Train worker loop (``worker``), the Tune callback that keeps the ledger and
``--resume`` built from it (``resume``), and interrupts (``interrupts``). The names below load
their module (and Ray) when first used."""

from __future__ import annotations

from trainables.lazy import surface

__all__ = [
    "TrialLedger",
    "plan_stage",
    "run_stage",
    "run_trial",
]
_HOME = {
    "plan_stage": "stage",
    "run_stage": "stage",
    "run_trial": "driver",
    "TrialLedger": "resume",
}


__getattr__ = surface(__name__, _HOME)
