"""The study's own record of its trials, and ``--resume`` rebuilt from it.

Tune can restore an experiment (``Tuner.restore``), but only by unpickling ``tuner.pkl``, its
experiment state and its searcher from the storage path: whoever can write there can run code
in the sweep. So the sweep never restores Tune's state. ``TrialLedger`` (a Tune callback)
records every trial in the output directory's run file as plain JSON: the config Tune gave it,
its status, its last result, its checkpoint and the Ray Train run that holds its checkpoints.
``--resume`` builds a new Tuner from the study file and that record:

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

import hashlib
import json
import math
from collections import Counter
from typing import Any, Iterable, Mapping

from ray import tune
from ray.tune.search import Searcher

from trainables.schema import flatten, set_nested

ENDED = ("completed", "diverged", "failed", "stopped")


def config_key(config: Mapping[str, Any]) -> str:
    """A trial's identity across launches: its config as canonical JSON."""
    return json.dumps(config, sort_keys=True, default=str)


def plan_fingerprint(plan) -> str:
    """What a launch ran: every stage's base, search and evaluation after --smoke-test and the
    command line. ``--resume`` refuses a plan that changed (a trial's record would not match)."""
    from trainables.schema import to_dict

    stages = [{"name": s.name, "base": s.base, "search": to_dict(s.search), "evaluation": to_dict(s.evaluation)}
              for s in plan.stages]
    blob = json.dumps({"seed": plan.seed, "stages": stages}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """A result value as JSON keeps it (Tune adds objects such as the config to results)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


class TrialLedger(tune.Callback):
    """Writes each trial's record to the run file as Tune starts and ends it."""

    def __init__(self, tracker, stage: str, resumes: Mapping[str, str] | None = None):
        self.tracker = tracker
        self.stage = stage
        self.resumes = dict(resumes or {})  # config key -> Train run name of an unfinished trial

    def _key(self, trial) -> str:
        return f"{self.stage}/{trial.trial_id}"

    def _update(self, trial, **fields) -> None:
        """One read and one write of the run file: this trial's record, and the earlier record
        it replaces when it resumes that one's Train run."""
        state = self.tracker.state
        records = state.setdefault("ledger", {})
        key = self._key(trial)
        record = records.setdefault(key, {"stage": self.stage, "trial_id": trial.trial_id})
        record.update(fields)
        if fields.get("resumes"):
            for other, old in records.items():
                if old.get("train_run") == record["train_run"] and other != key:
                    old["superseded_by"] = trial.trial_id
        self.tracker.save_state(state)

    def on_trial_start(self, iteration, trials, trial, **info):
        config = _plain(trial.config)
        train_run = self.resumes.get(config_key(config))
        self._update(trial, config=config, status="running", train_run=train_run or f"train-{trial.trial_id}",
                     **({"resumes": train_run.removeprefix("train-")} if train_run else {}))

    def _ended(self, trial, status: str, error: str | None = None) -> None:
        from . import interrupts

        last = {k: _plain(v) for k, v in (trial.last_result or {}).items() if k != "config"}
        if interrupts.received() and status in ("stopped", "failed"):
            status = "running"  # stopped by Ctrl-C / SIGTERM, not by the scheduler: resumed later
        try:
            checkpoint = trial.checkpoint.path if trial.checkpoint else None
        except Exception:  # noqa: BLE001 - the record is still worth keeping without it
            checkpoint = None
        self._update(trial, status=status, metrics=last, checkpoint=last.get("checkpoint_path") or checkpoint,
                     **({"error": error} if error else {}))

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = (trial.last_result or {}).get("status")
        self._ended(trial, status if status in ("completed", "diverged") else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        from .tracking import trial_error

        self._ended(trial, "failed", trial_error(trial))


def stage_records(state: Mapping[str, Any], stage: str) -> list[dict]:
    """This stage's trials as recorded, without those a later launch ran again."""
    return [r for r in state.get("ledger", {}).values() if r.get("stage") == stage and not r.get("superseded_by")]


def grid_points(search) -> list[dict]:
    """Every trial config of a grid search, ``num_samples`` times over (Tune's grid_search order
    is not kept: trials are matched by config)."""
    import itertools

    specs = search.param_specs()
    keys = list(specs)
    cases = [dict(c) for c in search.cases] or [None]
    points = []
    for values in itertools.product(*(list(specs[k].values) for k in keys)):
        for case in cases:
            point: dict[str, Any] = {}
            for key, v in zip(keys, values):
                set_nested(point, key.split("."), v)
            if case is not None:
                point["case"] = case
            points.append(_plain(point))
    return points * search.num_samples


class FixedConfigs(Searcher):
    """A searcher that hands out a fixed list of configs, then says it is finished (a grid, or
    what is left of one)."""

    def __init__(self, configs: Iterable[dict]):
        super().__init__()
        self.configs = list(configs)
        self.given = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        if self.given >= len(self.configs):
            return Searcher.FINISHED
        self.given += 1
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ended, to run again)."""
    ended = [r for r in records if r.get("status") in ENDED]
    return ended, [r for r in records if r.get("status") not in ENDED]


def resume_map(unfinished: list[dict]) -> dict[str, str]:
    """config key -> Train run to attach to, for unfinished trials whose config is unique (two
    identical configs cannot share one Train run: those start again from scratch)."""
    counts = Counter(config_key(r["config"]) for r in unfinished)
    return {config_key(r["config"]): r.get("train_run") or f"train-{r['trial_id']}"
            for r in unfinished if counts[config_key(r["config"])] == 1}


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


def distribution(spec):
    import optuna

    if spec.type == "float":
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                                    step=int(spec.step or 1))
    return optuna.distributions.CategoricalDistribution(list(spec.values))


def optuna_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config in Optuna's parameter names ("method_args/alpha")."""
    from .study import optuna_key

    return {optuna_key(k): v for k, v in flatten(config).items()}


def seeded_study(search, sampler, ended: list[dict], name: str):
    """An in-memory Optuna study holding the ended trials with their objective values (a trial
    without finite values is FAIL, as OptunaSearch tells Optuna of a NaN)."""
    import optuna

    from .study import optuna_key

    storage = optuna.storages.InMemoryStorage()
    directions = ["minimize" if m == "min" else "maximize" for m in search.modes]
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions)
    dists = {optuna_key(k): distribution(s) for k, s in search.param_specs().items()}
    for r in ended:
        params = {k: v for k, v in optuna_params(r["config"]).items() if k in dists}
        values = [(r.get("metrics") or {}).get(m) for m in search.objectives]  # what Optuna was told
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params},
            values=[float(v) for v in values] if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
    return storage
