"""The names that keep the two splits' numbers apart: a trial's accuracies on the test split keep
their names (``robust_acc``), those on the validation split a search selects on are prefixed
(``val/robust_acc``). Imports nothing, so every layer can use it."""
from __future__ import annotations

VAL_PREFIX = "val/"  # validation-split numbers: the screening evaluation, the monitor of a split run


def val_name(metric: str) -> str:
    """An accuracy's validation name (``robust_acc`` -> ``val/robust_acc``); other metrics
    (the training loss, timings) are the same on both splits."""
    return VAL_PREFIX + metric if metric.endswith("_acc") else metric
