"""One stage of a study as a Ray Tune experiment: the searcher (Optuna or a grid), the
scheduler (ASHA), the per-trial driver with its resources, and the Tuner.

Every launch builds a new Tuner from the study and the trials recorded by earlier launches of
it (``orchestrator.ledger``); ``Tuner.restore`` is never called, so nothing Tune pickled into
the storage path is ever loaded.
"""
from __future__ import annotations

from typing import Any


def startup_trials(num_samples: int) -> int:
    """TPE's random start-up trials: a third of the budget, at least 2 and at most 10 (Optuna's
    default of 10 would leave a 6-trial study without a single model-based suggestion)."""
    return max(2, min(10, num_samples // 3))


def sampler_label(search) -> str:
    """What the report and MLflow say about the sampler that ran."""
    if search.algorithm != "optuna":
        return "grid"
    objectives = f"{len(search.metrics)} objective{'s' if len(search.metrics) > 1 else ''}"
    if search.sampler == "tpe":
        return f"Optuna TPE ({objectives}, {startup_trials(search.num_samples)} random start-up trials)"
    if search.sampler == "nsga2":
        return f"Optuna NSGA-II ({objectives}, population 50: random for the first 50 trials)"
    return f"Optuna random ({objectives})"


def make_sampler(search, seed: int):
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":  # only for budgets of many populations
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(search.num_samples))


def trial_dirname(trial) -> str:
    """A trial's directory is named by its id, as the console, the summary and MLflow name it
    (Tune's default spells the searched values, with Optuna's "method_args/alpha" keys, into it)."""
    return f"trial_{trial.trial_id}"


def make_searcher(stage, seed: int, cap: int, records: list[dict], name: str):
    """(TuneConfig, trials still to run, resume map) for a stage's search, given the trials its
    earlier launches recorded (none on a first launch). See ``orchestrator.ledger``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from . import ledger
    from .stages import strip_refs
    from .study import DefineByRun, default_point, resolve

    search = stage.search
    specs = search.param_specs(stage.name)
    ended, unfinished = ledger.split(records)
    resumes = ledger.resume_map(unfinished)
    scheduler = None
    if search.scheduler.type == "asha":
        epochs = resolve(strip_refs(stage.base)).epochs
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.objectives[0], mode=search.modes[0], max_t=epochs,
                                  grace_period=search.scheduler.grace_period,
                                  reduction_factor=search.scheduler.reduction_factor, stop_last_trials=False)
    if search.algorithm == "grid":
        configs = [r["config"] for r in unfinished] + ledger.remaining_grid(search, records)
        searcher = ledger.FixedConfigs(configs)
        todo = len(configs)
    else:
        multi = len(search.metrics) > 1
        points = [ledger.optuna_params(r["config"]) for r in unfinished]
        if search.enqueue_defaults and not records:
            points.append(default_point(specs, stage.base))
        sampler = make_sampler(search, seed)
        # the objectives are validation numbers (study.SearchSpec.objectives): no test-split
        # number reaches Optuna or ASHA
        searcher = OptunaSearch(space=DefineByRun(specs, stage.base), metric=search.objectives if multi else search.objectives[0],
                                mode=search.modes if multi else search.modes[0], points_to_evaluate=points or None,
                                sampler=sampler, study_name=name,
                                storage=ledger.seeded_study(search, sampler, ended, name))
        todo = max(0, search.num_samples - len(ended))
    config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max(1, todo),
                             max_concurrent_trials=cap, trial_dirname_creator=trial_dirname)
    return config, todo, resumes


def run_stage(stage, plan, *, storage_path: str, tracker, parent_run_id: str, refs: dict[str, str],
              cap: int, tags: dict[str, str], driver_resources: dict[str, float], console=None) -> list[dict]:
    """Run one stage, or what an earlier launch left of it; its trials as summary rows."""
    from ray import tune

    from trainables.schema import to_dict

    from . import ledger
    from .driver import run_trial
    from .interrupts import InterruptWatch
    from .summary import rows_from_records
    from .tracking import MLflowTrialCallback, Progress

    exp_name = f"{plan.study.name}-{stage.name}"
    records = ledger.stage_records(tracker.state, stage.name)
    tune_config, todo, resumes = make_searcher(stage, plan.seed, cap, records, exp_name)
    ended = len(ledger.split(records)[0])
    payload = {"base": stage.base, "resources": to_dict(plan.resources), "storage_path": storage_path,
               "protocol": stage.evaluation.protocol, "protocol_overrides": stage.evaluation.overrides,
               "screen": stage.evaluation.screen,
               "transfer_source": stage.evaluation.transfer_source, "refs": refs, "stage": stage.name,
               "console": console, "resumes": resumes}
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), driver_resources)
    total = ended + todo
    callbacks = [ledger.TrialLedger(tracker, stage.name, resumes),
                 MLflowTrialCallback(tracker, parent_run_id=parent_run_id, stage=stage.name, study=plan.study.name,
                                     base=stage.base, refs=refs, tags=tags, resumes=resumes),
                 Progress(stage.name, total, console, done=ended), InterruptWatch()]
    again = f", {ended} ended earlier, {len(resumes)} resumed from their checkpoints" if records else ""
    print(f"[{stage.name}] {total} trial(s){again}, up to {cap} at once, {plan.resources.num_workers} worker(s) each; "
          f"search: {sampler_label(stage.search)}", flush=True)
    tracker.log_params(parent_run_id, {f"sampler.{stage.name}": sampler_label(stage.search)})
    if todo > 0:
        # a new Tuner on every launch: Tune's pickled state (tuner.pkl, searcher state) is never read
        tune.Tuner(trainable, tune_config=tune_config,
                   run_config=tune.RunConfig(name=exp_name, storage_path=storage_path, callbacks=callbacks,
                                             verbose=0)).fit()
    return rows_from_records(ledger.stage_records(tracker.state, stage.name), study=plan.study.name, stage=stage,
                             refs=refs, tracker=tracker)
