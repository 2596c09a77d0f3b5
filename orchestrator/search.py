"""One stage of a study as a Ray Tune experiment: the searcher (Optuna or a grid), the
scheduler (ASHA), the per-trial driver with its resources, and the Tuner, created or restored.

On ``--resume`` the Tuner is restored with Ray's public API (``Tuner.restore``). The restored
run config carries the callbacks pickled at launch; they find this launch's MLflow runs
through the output directory's run file (``orchestrator.tracking.RUNS_FILE``), so they need no
replacing.
"""
from __future__ import annotations

import os
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


def make_searcher(stage, seed: int, cap: int):
    """(TuneConfig, param_space, number of trials) for a stage's search."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from trainables.schema import set_nested

    from .stages import strip_refs
    from .study import DefineByRun, default_point, grid_size, resolve

    search = stage.search
    specs = search.param_specs(stage.name)
    scheduler = None
    if search.scheduler.type == "asha":
        epochs = resolve(strip_refs(stage.base)).epochs
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metrics[0], mode=search.modes[0], max_t=epochs,
                                  grace_period=search.scheduler.grace_period,
                                  reduction_factor=search.scheduler.reduction_factor, stop_last_trials=False)
    if search.algorithm == "grid":
        param_space: dict[str, Any] = {}
        for key, spec in specs.items():
            set_nested(param_space, key.split("."), tune.grid_search(list(spec.values)))
        if search.cases:
            param_space["case"] = tune.grid_search([dict(c) for c in search.cases])
        config = tune.TuneConfig(scheduler=scheduler, num_samples=search.num_samples, max_concurrent_trials=cap,
                                 trial_dirname_creator=trial_dirname)
        return config, param_space, grid_size(search, specs)
    multi = len(search.metrics) > 1
    sampler = make_sampler(search, seed)
    points = [default_point(specs, stage.base)] if search.enqueue_defaults else None
    searcher = OptunaSearch(space=DefineByRun(specs, stage.base), metric=search.metrics if multi else search.metrics[0],
                            mode=search.modes if multi else search.modes[0], points_to_evaluate=points or None,
                            sampler=sampler)
    config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=search.num_samples,
                             max_concurrent_trials=cap, trial_dirname_creator=trial_dirname)
    return config, {}, search.num_samples


def run_stage(stage, plan, *, storage_path: str, tracker, parent_run_id: str, refs: dict[str, str],
              cap: int, resume: bool, tags: dict[str, str], driver_resources: dict[str, float],
              console=None) -> list[dict]:
    """Run (or resume) one stage; its trials as summary rows."""
    from ray import tune

    from trainables.schema import to_dict

    from .driver import run_trial
    from .summary import rows_from_results
    from .interrupts import InterruptWatch
    from .tracking import MLflowTrialCallback, Progress

    payload = {"base": stage.base, "resources": to_dict(plan.resources), "storage_path": storage_path,
               "protocol": stage.evaluation.protocol, "protocol_overrides": stage.evaluation.overrides,
               "transfer_source": stage.evaluation.transfer_source, "refs": refs, "stage": stage.name,
               "console": console}
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), driver_resources)
    tune_config, param_space, total = make_searcher(stage, plan.seed, cap)
    callbacks = [MLflowTrialCallback(tracker, parent_run_id=parent_run_id, stage=stage.name, study=plan.study.name,
                                     base=stage.base, refs=refs, tags=tags),
                 Progress(stage.name, total, console), InterruptWatch()]
    exp_name = f"{plan.study.name}-{stage.name}"
    exp_path = os.path.join(storage_path, exp_name)
    print(f"[{stage.name}] {total} trial(s), up to {cap} at once, {plan.resources.num_workers} worker(s) each; "
          f"search: {sampler_label(stage.search)}", flush=True)
    tracker.log_params(parent_run_id, {f"sampler.{stage.name}": sampler_label(stage.search)})
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=param_space or None)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=exp_name, storage_path=storage_path,
                                                     callbacks=callbacks, verbose=0))
    grid = tuner.fit()
    return rows_from_results(grid, study=plan.study.name, stage=stage, refs=refs, tracker=tracker)
