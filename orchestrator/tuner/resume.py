"""The study's own record of its trials, and ``--resume`` rebuilt from it.

Tune can restore an experiment (``Tuner.restore``), but only by unpickling ``tuner.pkl``, its
experiment state and its searcher from the storage path: whoever can write there can run code
in the sweep. So the sweep never restores Tune's state. ``TrialLedger`` (a Tune callback)
records every trial in the launch file's ledger (``orchestrator.record.ledger``) as plain JSON: the config
Tune gave it, its status, its last result, its checkpoint and the Ray Train run that holds its
checkpoints. ``--resume`` builds a new Tuner from the study file and that record:

- trials that ended (completed, diverged, failed, stopped early by ASHA) are not run again;
  their rows come from the record;
- trials that were running when the driver died or was interrupted run again with the same
  config, attached to their old Ray Train run (``train-<first trial id>``), which resumes from
  its last checkpoint, and to their old MLflow run;
- trials never started: a grid's remaining points; for Optuna, a study seeded with the ended
  trials (their values, so TPE/NSGA-II learn from them) runs the rest of ``num_samples``.

What differs from an uninterrupted run: the Optuna sampler's random state (it is re-seeded, not
restored), and ASHA's rungs, which start from the trials still to run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from ray import tune

from ..record import (
    LaunchFile,
    TrialStatus,
    completed_status,
    plain,
    train_run_name,
    trial_error,
    trial_key,
    trial_of_train_run,
)
from ..study import config_key, grid_points
from . import interrupts
from .trace import stamp


class TrialLedger(tune.Callback):
    """Writes each trial's record to the launch file as Tune starts and ends it."""

    def __init__(self, launch_file: LaunchFile, stage: str, resumes: Mapping[str, str] | None = None):
        self.launch_file = launch_file
        self.stage = stage
        self.resumes = dict(resumes or {})  # config key -> Train run name of an unfinished trial

    def _update(self, trial, **fields) -> None:
        """One read and one write of the launch file: this trial's record, and the earlier record
        it replaces when it resumes that one's Train run."""
        key = trial_key(self.stage, trial.trial_id)

        def change(state: dict) -> None:
            records = state.setdefault("ledger", {})
            record = records.setdefault(key, {"stage": self.stage, "trial_id": trial.trial_id})
            record.update(fields)
            if fields.get("resumes"):
                for other, old in records.items():
                    if old.get("train_run") == record["train_run"] and other != key:
                        old["superseded_by"] = trial.trial_id

        self.launch_file.update(change)

    def on_trial_start(self, iteration, trials, trial, **info):
        stamp("tune_start", trial.trial_id)  # Tune has the trial's actor started (start-up trace only)
        config = plain(trial.config)
        train_run = self.resumes.get(config_key(config))
        self._update(
            trial,
            config=config,
            status=TrialStatus.RUNNING.value,
            train_run=train_run or train_run_name(trial.trial_id),
            **({"resumes": trial_of_train_run(train_run)} if train_run else {}),
        )

    def _ended(self, trial, status: TrialStatus, error: str | None = None) -> None:
        last = {k: plain(v) for k, v in (trial.last_result or {}).items() if k != "config"}
        if interrupts.received() and status in (TrialStatus.STOPPED, TrialStatus.FAILED):
            status = TrialStatus.RUNNING  # stopped by Ctrl-C / SIGTERM, not by the scheduler: resumed later
        try:
            checkpoint = trial.checkpoint.path if trial.checkpoint else None
        except Exception:  # noqa: BLE001 - the record is still worth keeping without it
            checkpoint = None
        self._update(
            trial,
            status=status.value,
            metrics=last,
            checkpoint=last.get("checkpoint_path") or checkpoint,
            **({"error": error} if error else {}),
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        stamp("tune_complete", trial.trial_id)  # Tune has the trial's end (start-up trace only)
        self._ended(trial, completed_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial, TrialStatus.FAILED, trial_error(trial))


def resume_map(unfinished: list[dict]) -> dict[str, str]:
    """config key -> Train run to attach to, for unfinished trials whose config is unique (two
    identical configs cannot share one Train run: those start again from scratch)."""
    counts = Counter(config_key(r["config"]) for r in unfinished)
    return {
        config_key(r["config"]): r.get("train_run") or train_run_name(r["trial_id"])
        for r in unfinished
        if counts[config_key(r["config"])] == 1
    }


def remaining_grid(search, records: list[dict]) -> list[dict]:
    """The grid points no recorded trial has taken (each recorded config takes one)."""
    left = Counter(config_key(r["config"]) for r in records)
    out = []
    for point in grid_points(search):
        k = config_key(point)
        if left[k] > 0:
            left[k] -= 1
        else:
            out.append(point)
    return out
