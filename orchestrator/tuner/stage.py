"""One stage of a study as a Ray Tune experiment: the searcher (Optuna or a grid), the scheduler
(ASHA), the per-trial driver with its resources, and the Tuner.

Every launch builds a new Tuner from the study and the trials recorded by earlier launches of
it (``orchestrator.tuner.ledger``); ``Tuner.restore`` is never called, so nothing Tune pickled
into the storage path is ever loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..record import split
from ..study import DefineByRun, default_point, optuna_name, optuna_params, strip_refs
from ..study import resolve_config as resolve
from .resume import remaining_grid, resume_map
from .searchers import FixedConfigs, SeedRepeats, make_sampler, mean_result, point_of, seeded_study


def trial_dirname(trial) -> str:
    """A trial's directory is named by its id, as the console, the summary and MLflow name it
    (Tune's default spells the searched values, with Optuna's "method_args/alpha" keys, into it)."""
    return f"trial_{trial.trial_id}"


@dataclass
class StagePlan:
    """What is left of a stage to run: the Tune config, how many trials, and which unfinished
    trials resume their Train runs."""

    tune_config: Any
    todo: int
    ended: int
    resumes: dict[str, str]


def _scheduler(stage):
    from ray.tune.schedulers import ASHAScheduler

    search = stage.search
    if search.scheduler.type != "asha":
        return None
    return ASHAScheduler(
        time_attr="epoch",
        metric=search.rung_metric,
        mode=search.modes[0],
        max_t=resolve(strip_refs(stage.base)).epochs,
        grace_period=search.scheduler.grace_period,
        reduction_factor=search.scheduler.reduction_factor,
        stop_last_trials=False,
    )


def _seed_groups(ended: list[dict], unfinished: list[dict], seeds: int) -> tuple[list[dict], dict, list[dict]]:
    """A seeded search's earlier trials by point: the points whose every seed ended (Optuna
    learns their means), the seeds that ended of the other points (``SeedRepeats``' ``earlier``),
    and one trial config per such point to enqueue again."""
    by_point: dict[str, dict] = {}
    for r in ended + unfinished:
        by_point.setdefault(point_of(r["config"]), {"config": r["config"], "ended": {}})
    for r in ended:
        by_point[point_of(r["config"])]["ended"][r["config"].get("seed")] = r.get("metrics") or {}
    whole, earlier, again = [], {}, []
    for key, p in by_point.items():
        if len(p["ended"]) >= seeds:
            whole.append({"config": p["config"], "metrics": p["ended"]})
        else:
            earlier[key] = p["ended"]
            again.append({k: v for k, v in p["config"].items() if k != "seed"})
    return whole, earlier, again


def _optuna(stage, seed: int, records: list[dict], ended: list[dict], again: list[dict], name: str, url: str | None):
    from ray.tune.search.optuna import OptunaSearch

    search = stage.search
    specs = search.param_specs(stage.name)
    points = [optuna_params(c) for c in again]
    if search.enqueue_defaults and not records:
        points.append({optuna_name(k): v for k, v in default_point(specs, stage.base).items()})
    sampler = make_sampler(search, seed)
    multi = len(search.objectives) > 1
    # the objectives are validation numbers (StageSpec.search.objectives): no test-split number
    # reaches Optuna or ASHA
    return OptunaSearch(
        space=DefineByRun(specs, stage.base),
        metric=search.objectives if multi else search.objectives[0],
        mode=search.modes if multi else search.modes[0],
        points_to_evaluate=points or None,
        sampler=sampler,
        study_name=name,
        storage=seeded_study(search, sampler, ended, name, url),
    )


def _search(stage, seed: int, cap: int, records: list[dict], name: str, url: str | None):
    """An Optuna stage's searcher (its seeds repeated by ``SeedRepeats``, batches of ``cap``
    trials when ``search.batch``) and how many trials are left to run."""
    from ray.tune.search import ConcurrencyLimiter

    search = stage.search
    ended, unfinished = split(records)
    seeds = len(search.seeds)
    if seeds:
        whole, earlier, again = _seed_groups(ended, unfinished, seeds)
        for w in whole:  # Optuna learns a point's mean over its seeds
            w["metrics"] = mean_result(list(w["metrics"].values()), search.objectives, seeds) or {}
        inner = _optuna(stage, seed, records, whole, again, name, url)
        searcher = SeedRepeats(inner, search.seeds, search.objectives, earlier)
        todo = max(0, (search.num_samples - len(whole)) * seeds - sum(len(e) for e in earlier.values()))
    else:
        searcher = _optuna(stage, seed, records, ended, [r["config"] for r in unfinished], name, url)
        todo = max(0, search.num_samples - len(ended))
    return ConcurrencyLimiter(searcher, max_concurrent=cap, batch=search.batch), todo


def plan_stage(stage, seed: int, cap: int, records: list[dict], name: str, url: str | None = None) -> StagePlan:
    """The Tune config of what is left of a stage, given the trials its earlier launches recorded
    (none on a first launch); an Optuna stage's study lives in the database at ``url`` (in memory
    without one). See ``orchestrator.tuner.resume``."""
    from ray import tune

    ended, unfinished = split(records)
    if stage.search.algorithm == "grid":
        configs = [r["config"] for r in unfinished] + remaining_grid(stage.search, records)
        searcher, todo, limit = FixedConfigs(configs), len(configs), cap
    else:  # the searcher carries its own concurrency limit
        (searcher, todo), limit = _search(stage, seed, cap, records, name, url), None
    config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=_scheduler(stage),
        num_samples=max(1, todo),
        max_concurrent_trials=limit,
        trial_dirname_creator=trial_dirname,
    )
    return StagePlan(config, todo, len(ended), resume_map(unfinished))


def run_stage(stage, *, name: str, trainable, tune_config, storage_path: str, callbacks: list) -> None:
    """Run a stage's trials (a new Tuner on every launch: Tune's pickled state is never read)."""
    from ray import tune

    from .driver import start_autoscaling_coordinator

    start_autoscaling_coordinator()

    tune.Tuner(
        trainable,
        tune_config=tune_config,
        run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks, verbose=0),
    ).fit()
