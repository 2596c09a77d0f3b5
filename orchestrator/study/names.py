"""The names of a trial's numbers: which split an accuracy was measured on, and which reported
keys are not measurements at all. Imports nothing, so every layer can use it.

An evaluation's keys (``clean_acc``, ``robust_acc``, ``n_eval``, ``masking_flags``, ...) are
recorded under the split they were measured on: ``val/`` for the screening evaluation a search
selects on, ``test/`` for the certification of the finalists. Training metrics (``loss``,
``epoch``, ``monitor_*``, timings) carry no prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VAL = "val/"  # the screening evaluation on the validation split: what a search selects on
TEST = "test/"  # the certification on the test split: what is reported
SPLITS = (VAL, TEST)


def val_name(metric: str) -> str:
    """An accuracy's validation name (``robust_acc`` -> ``val/robust_acc``); other metrics (the
    training loss, timings) are the trial's own, on no split."""
    return VAL + metric if metric.endswith("_acc") else metric


# An evaluation's keys that are not recorded with a trial (too large, or spelled out elsewhere).
EVALUATION_DETAIL = ("protocol_budgets", "masking_checks", "per_image")


def under(prefix: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's result under its split's names; the per-image worst case is also its
    ``robust_acc`` (the number a study's ``metric: robust_acc`` means)."""
    out = {prefix + k: v for k, v in result.items() if k not in EVALUATION_DETAIL}
    if "robust_acc_min" in result:
        out[prefix + "robust_acc"] = result["robust_acc_min"]
    return out


# What Tune adds to every result: bookkeeping, not metrics.
TUNE_INTERNAL = frozenset(
    {
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "time_since_restore",
        "iterations_since_restore",
        "training_iteration",
        "date",
        "done",
        "config",
        "trial_id",
        "checkpoint_dir_name",
        "should_checkpoint",
        "experiment_tag",
    }
)
PLACEMENT = ("device", "node_id")  # where a trial ran: kept with its results, not a metric
# Results that are settings of an evaluation, not measurements (MLflow params), under every split.
_SETTINGS = (
    "eps",
    "n_eval",
    "autoattack_n",
    "attack_step_size",
    "large_eps",
    "cw_l2_radius",
    "cw_l2_n",
    "robust_acc_min_n",
    "protocol",
    "dataset",
)
SETTINGS = frozenset({"final", "resumed_from_epoch", *_SETTINGS, *(p + k for p in SPLITS for k in _SETTINGS)})
NOT_METRICS = TUNE_INTERNAL | SETTINGS | set(PLACEMENT)

# What every trial reports per epoch (trainables.loop) and with its final result (the worker).
EPOCH_METRICS = (
    "loss", "train_acc", "lr", "epoch_time_s", "images_per_s", "monitor_clean_acc", "monitor_pgd_acc", "monitor_time_s"
)  # fmt: skip
FINAL_METRICS = ("mean_epoch_time_s", "mean_images_per_s", "total_monitor_time_s")
# What a study's per-epoch objective names mean in a trial's per-epoch results (ASHA's rungs).
PER_EPOCH = {"robust_acc": "monitor_pgd_acc", "clean_acc": "monitor_clean_acc", "loss": "loss"}
