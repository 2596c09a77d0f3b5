"""The searchers a stage runs: Optuna's samplers (seeded), a fixed list of configs (a grid, or
what is left of one), and an Optuna study seeded with the trials earlier launches ended."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ray.tune.search import Searcher

from ..study import distribution, optuna_name, optuna_params, startup_trials


def make_sampler(search, seed: int):
    import optuna

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":  # only for budgets of many populations
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(search.num_samples))


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


def seeded_study(search, sampler, ended: list[dict], name: str):
    """An in-memory Optuna study holding the ended trials with their objective values (a trial
    without finite values is FAIL, as OptunaSearch tells Optuna of a NaN)."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    directions = ["minimize" if m == "min" else "maximize" for m in search.modes]
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, directions=directions)
    dists = {optuna_name(k): distribution(s) for k, s in search.param_specs().items()}
    for r in ended:
        params = {k: v for k, v in optuna_params(r["config"]).items() if k in dists}
        values = [(r.get("metrics") or {}).get(m) for m in search.objectives]  # what Optuna was told
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                values=[float(v) for v in values] if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            )
        )
    return storage
