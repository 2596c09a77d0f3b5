"""The searchers a stage runs: Optuna's samplers (seeded), a fixed list of configs (a grid, or
what is left of one), an Optuna study seeded with the trials earlier launches ended, and every
point repeated across seeds."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable

from ray.tune.search import Searcher

from ..study import distribution, optuna_name, optuna_params, startup_trials
from .trace import stamp


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
        stamp("suggested", trial_id)  # Tune is creating the trial: its actor is asked for next (trace only)
        return dict(self.configs[self.given - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass


def seeded_study(search, sampler, ended: list[dict], name: str, url: str | None = None):
    """The stage's Optuna study, in the database at ``url`` (an in-memory one without): the study
    an earlier launch searched in, continued (its trials left RUNNING by a killed driver are
    marked FAIL; they run again as enqueued points), or a new one holding the trials earlier
    launches ended with their objective values (a trial without finite values is FAIL, as
    OptunaSearch tells Optuna of a NaN). Parameters and values are data in the database, never
    pickles. Returns the storage, for OptunaSearch to load the study from."""
    import optuna

    storage = optuna.storages.RDBStorage(url) if url else optuna.storages.InMemoryStorage()
    existed = any(s.study_name == name for s in storage.get_all_studies())
    directions = ["minimize" if m == "min" else "maximize" for m in search.modes]
    study = optuna.create_study(
        storage=storage, study_name=name, sampler=sampler, directions=directions, load_if_exists=True
    )
    with warnings.catch_warnings():  # experimental in Optuna 5; the dashboard labels its axes with them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(search.objectives))
    if existed and study.get_trials(deepcopy=False):
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        return storage
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


def point_of(trial_config: dict) -> str:
    """A trial's point across seeds: its searched values in Optuna's names, without its seed."""
    return json.dumps(
        {k: v for k, v in optuna_params(trial_config).items() if k != "seed"}, sort_keys=True, default=str
    )


def mean_result(results: list[dict | None], objectives: list[str], seeds: int) -> dict | None:
    """What Optuna is told of a point: each objective's mean over its seeds, or None (a failed
    point) unless every seed reported a finite value of every objective."""
    values = [[(r or {}).get(o) for r in results] for o in objectives]
    if len(results) < seeds or not all(isinstance(v, (int, float)) and math.isfinite(v) for vs in values for v in vs):
        return None
    return {o: sum(vs) / len(vs) for o, vs in zip(objectives, values)}


class SeedRepeats(Searcher):
    """Each point the inner searcher suggests runs once per seed, each a trial of its own whose
    ``seed`` differs (its seeds are suggested one after another); the inner searcher is told the
    point's mean over its seeds once all of them have ended, so a search chooses on means.

    ``earlier`` maps a point (``point_of``) to the results of its seeds that ended in earlier
    launches: when the inner searcher suggests that point again (it is enqueued on a resume), only
    its other seeds run, and its mean takes the earlier results in."""

    def __init__(self, inner: Searcher, seeds: Iterable[int], objectives: list[str], earlier: dict | None = None):
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.inner, self.seeds, self.objectives = inner, list(seeds), list(objectives)
        self.earlier = dict(earlier or {})  # point -> {seed: result}
        self.queue: list[tuple[str, dict]] = []  # (point id, trial config) still to hand out
        self.points: dict[str, dict] = {}  # point id -> {"left": trials still to end, "results": [...]}
        self.member: dict[str, str] = {}  # trial id -> point id
        self.asked = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def _next_point(self):
        """Ask the inner searcher for a point and queue its seeds; None or FINISHED when it has none."""
        pid = f"point_{self.asked}"
        self.asked += 1
        config = self.inner.suggest(pid)
        if config is None or config == Searcher.FINISHED:
            return config
        done = self.earlier.pop(point_of(config), {})
        todo = [s for s in self.seeds if s not in done]
        self.points[pid] = {"left": len(todo), "results": list(done.values())}
        self.queue = [(pid, {**config, "seed": s}) for s in todo]
        if not todo:  # every seed ended before: tell the mean now
            self._tell(pid)
        return config

    def suggest(self, trial_id: str):
        while not self.queue:
            got = self._next_point()
            if got is None or got == Searcher.FINISHED:
                return got
        pid, config = self.queue.pop(0)
        self.member[trial_id] = pid
        return dict(config)

    def _tell(self, pid: str) -> None:
        point = self.points.pop(pid)
        mean = mean_result(point["results"], self.objectives, len(self.seeds))
        self.inner.on_trial_complete(pid, result=mean, error=mean is None)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pid = self.member.pop(trial_id, None)
        if pid is None:
            return
        point = self.points[pid]
        point["results"].append(None if error else result)
        point["left"] -= 1
        if point["left"] <= 0:
            self._tell(pid)
