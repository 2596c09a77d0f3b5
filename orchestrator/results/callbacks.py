"""The Tune callback that keeps each trial's MLflow run: created when Tune starts the trial,
per-epoch metrics as it reports, its screening on validation, tags and artifacts at the end, and
the trial's real status (``orchestrator.record.TrialStatus``) as the run's. It writes through the
study's ``Tracker``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray import tune

from trainables.checkpoint import CHECKPOINT_FILE, EVAL_FILE

from ..record import TrialStatus, completed_status, trial_error, trial_key, trial_of_train_run
from ..study import SETTINGS, VAL, config_key, searched_values, seed_group, short_name, trial_config
from .tracking import CHECKPOINT_ARTIFACT_MAX, Tracker, metric_items


class MLflowTrialCallback(tune.Callback):
    """Creates a child run per trial, logs per-epoch metrics, the final result (its screening on
    validation), tags and artifacts, and ends the run with the trial's real status."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        parent_run_id: str,
        stage: str,
        study: str,
        base: Mapping[str, Any],
        refs: Mapping[str, str],
        tags: Mapping[str, str],
        resumes: Mapping[str, str] | None = None,
    ):
        self.tracker = tracker
        self.resumes = dict(resumes or {})  # config key -> Train run of a trial run again: its MLflow run goes on
        self.parent = parent_run_id
        self.stage = stage
        self.study = study
        self.base = dict(base)
        self.refs = dict(refs)
        self.tags = dict(tags)
        self._described: set[str] = set()  # trials whose resolved config is logged
        self._run_ids: dict[str, str] = {}

    def run_id(self, trial) -> str | None:
        """The trial's MLflow run (read from the launch file once, then remembered: it never changes)."""
        key = trial_key(self.stage, trial.trial_id)
        if key not in self._run_ids:
            launch_file = self.tracker.launch_file
            run_id = launch_file.trial_run_id(key)
            if run_id is None:
                train_run = self.resumes.get(config_key(trial.config))
                run_id = train_run and launch_file.trial_run_id(trial_key(self.stage, trial_of_train_run(train_run)))
                if not run_id:
                    return None
                launch_file.set_trial_run_id(key, run_id)
            self._run_ids[key] = run_id
        return self._run_ids[key]

    def config(self, trial) -> dict[str, Any]:
        """The trial's config as its worker resolved and reported it; before the first report
        (or for a trial that failed before one), the config it was given."""
        reported = (trial.last_result or {}).get("resolved_config")
        return json.loads(reported) if reported else trial_config(self.base, trial.config, self.refs)

    def _describe(self, run_id: str, cfg: Mapping[str, Any]) -> None:
        self.tracker.client.set_tag(run_id, "model", str(cfg.get("model")))
        self.tracker.client.set_tag(run_id, "dataset", str(cfg.get("dataset")))
        self.tracker.log_params(run_id, cfg)

    def on_trial_start(self, iteration, trials, trial, **info):
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is not None:
            client.update_run(run_id, "RUNNING")
            client.set_tag(run_id, "trial_status", TrialStatus.RUNNING.value)
            return
        cfg = self.config(trial)  # as given: the resolved config follows with the first result
        searched = searched_values(trial.config)
        group = seed_group(searched) if "seed" in searched else None
        searched.pop("case", None)
        tags = {
            **self.tags,
            "mlflow.parentRunId": self.parent,
            "study": self.study,
            "stage": self.stage,
            "trial_id": trial.trial_id,
            "method": str(cfg.get("method")),
            "trial_status": TrialStatus.RUNNING.value,
            "searched_params": ",".join(short_name(k) for k in searched),
            **({"seed_group": group} if group else {}),  # the point's trials across seeds share it
        }
        run = client.create_run(self.tracker.experiment_id, run_name=f"{self.stage}-{trial.trial_id}", tags=tags)
        self.tracker.launch_file.set_trial_run_id(trial_key(self.stage, trial.trial_id), run.info.run_id)
        self._run_ids[trial_key(self.stage, trial.trial_id)] = run.info.run_id
        # the searched values under the names a person reads (alpha, gamma_beta), beside the dotted config
        self.tracker.log_params(run.info.run_id, {short_name(k): v for k, v in searched.items()})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        if run_id is None:
            return
        if result.get("resolved_config") and trial.trial_id not in self._described:
            self._described.add(trial.trial_id)
            self._describe(run_id, json.loads(result["resolved_config"]))
            if result.get("data_inputs"):  # what it trains and screens on: MLflow dataset inputs
                self.tracker.log_inputs(run_id, json.loads(result["data_inputs"]))
            if result.get("precision"):  # what the training forwards ran in (fast.amp=auto decides per method)
                self.tracker.log_params(run_id, {"precision": result["precision"]})
        settings = {k: result[k] for k in SETTINGS if k in result and k != "resumed_from_epoch"}
        if settings:
            self.tracker.log_params(run_id, settings)
        if result.get("resumed_from_epoch"):
            self.tracker.client.set_tag(run_id, "resumed_from_epoch", str(result["resumed_from_epoch"]))
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        self.tracker.log_metrics(run_id, metric_items(result), step)

    def _finish(self, trial, status: TrialStatus, error: str | None = None) -> None:
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is None:
            return
        client.set_tag(run_id, "trial_status", status.value)
        last = trial.last_result or {}
        if last.get(f"{VAL}masking_flags") is not None:
            client.set_tag(run_id, "val_masking_flags", ",".join(last[f"{VAL}masking_flags"]) or "none")
        try:
            cfg = self.config(trial)
            if trial.trial_id not in self._described:  # failed before its first report
                self._describe(run_id, cfg)
            self.tracker.log_artifact_json(run_id, "config.json", cfg)
            ck = last.get("checkpoint_path")
            if ck:
                client.set_tag(run_id, "checkpoint", str(Path(ck, CHECKPOINT_FILE)))
            if ck and Path(ck, EVAL_FILE).exists():
                client.log_artifact(run_id, str(Path(ck, EVAL_FILE)))
            if (
                ck
                and Path(ck, CHECKPOINT_FILE).exists()
                and Path(ck, CHECKPOINT_FILE).stat().st_size <= CHECKPOINT_ARTIFACT_MAX
            ):
                client.log_artifact(run_id, str(Path(ck, CHECKPOINT_FILE)))
            if error:
                self.tracker.log_artifact_json(run_id, "error.json", {"error": error})
        finally:
            client.set_terminated(run_id, status.mlflow)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, completed_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        cause = trial_error(trial)
        if self.run_id(trial) is not None:
            self.tracker.client.set_tag(self.run_id(trial), "error", cause)
        self._finish(trial, TrialStatus.FAILED, error=cause)
