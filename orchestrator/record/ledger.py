"""The ledger: every trial's record in the launch file (``orchestrator.record.launch_file``), as
plain JSON: the config Tune gave it, its status, its last result, its checkpoint and the Ray Train
run that holds its checkpoints. ``orchestrator.tuner.resume`` writes it as Tune starts and ends
trials and builds ``--resume`` from it; the summary reads it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .status import ENDED

TRAIN_RUN_PREFIX = "train-"


def train_run_name(trial_id: str) -> str:
    """The Ray Train run of a trial (the same name and storage path resume its checkpoints)."""
    return TRAIN_RUN_PREFIX + trial_id


def trial_of_train_run(train_run: str) -> str:
    """The id of the trial that started the Ray Train run ``train_run``."""
    return train_run.removeprefix(TRAIN_RUN_PREFIX)


def plain(value: Any) -> Any:
    """A result value as JSON keeps it (Tune adds objects such as the config to results)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def stage_records(state: Mapping[str, Any], stage: str) -> list[dict]:
    """This stage's trials as recorded, without those a later launch ran again."""
    return [r for r in state.get("ledger", {}).values() if r.get("stage") == stage and not r.get("superseded_by")]


def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ended, to run again)."""
    ended = [r for r in records if r.get("status") in ENDED]
    return ended, [r for r in records if r.get("status") not in ENDED]
