"""The search space's vocabulary: one home for how a searched value is spelled and where it goes.

A searched key has one canonical spelling, dotted as in the study file (``method_args.alpha``);
it is what MLflow params, summary.csv and the report use. Its other spellings are conversions
made here and nowhere else:

- Optuna's parameter name, ``method_args/alpha`` (``optuna_name``): Ray's
  OptunaSearch flattens nested keys with ``/``, and a point given with other keys is silently
  ignored;
- Tune's trial config, a nested dict ``{"method_args": {"alpha": ...}}`` (``nested`` /
  ``searched_values``), which is also what a trial's training config is merged from
  (``trial_config``);
- the name a person reads in tables and on the console, ``alpha`` (``short_name``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

from trainables.schema import deep_merge, flatten, set_nested, to_dict

from .refs import collect_refs, expand_ref, is_ref, is_template, resolve_refs, strip_refs, substitute
from .spec import ParamSpec, SearchSpec

CASE = "case"  # a grid's named config variant, in Tune's trial config: {"case": {"name": ..., keys...}}
SHORT_NAMES = {"method_args.lr_beta": "gamma_beta"}  # the paper's name where ours differs


def optuna_name(key: str) -> str:
    """``method_args.alpha`` -> ``method_args/alpha``."""
    return key.replace(".", "/")


def short_name(key: str) -> str:
    """``method_args.alpha`` -> ``alpha``; ``method_args.lr_beta`` -> ``gamma_beta``."""
    return SHORT_NAMES.get(key, key.split(".")[-1])


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys -> Tune's nested trial config."""
    out: dict[str, Any] = {}
    for key, v in values.items():
        set_nested(out, key.split("."), v)
    return out


def searched_values(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's searched values with dotted keys; a grid case by its name under ``case``."""
    case = trial_config.get(CASE)
    values = flatten({k: v for k, v in trial_config.items() if k != CASE})
    return {CASE: case["name"], **values} if case else values


def optuna_params(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config in Optuna's parameter names."""
    return {optuna_name(k): v for k, v in flatten(trial_config).items()}


def config_key(trial_config: Mapping[str, Any]) -> str:
    """A trial's identity across launches: its config as canonical JSON."""
    return json.dumps(trial_config, sort_keys=True, default=str)


def trial_values(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict:
    """A trial's training config before its stage references become checkpoint paths: the
    stage's base, its grid case and the searched values on top."""
    given = dict(given)
    case = given.pop(CASE, None) or {}
    merged = deep_merge(base, {k: v for k, v in case.items() if k != "name"})
    return deep_merge(merged, given)


def _refs_in(value: Any) -> set[str]:
    if is_ref(value):
        return {value}
    if isinstance(value, Mapping):
        return set().union(*(_refs_in(v) for v in value.values())) if value else set()
    return set()


def stage_refs(stage) -> set[str]:
    """Every concrete stage reference a stage's trials use: its references as written, with each
    template filled from the values of each grid point that uses it."""
    written = collect_refs(stage)
    concrete = {r for r in written if not is_template(r)}
    if any(is_template(r) for r in written):  # templates are grid-only (a study rule)
        for point in grid_points(stage.search):
            values = trial_values(stage.base, point)
            flat = flatten(values)
            concrete |= {expand_ref(r, flat, f"stage {stage.name}") for r in _refs_in(values) if is_template(r)}
    return concrete


def resolve_refs_for(stage, rows: list[dict], refs: dict[str, str]) -> dict[str, str]:
    """``refs`` with every reference of ``stage`` resolved against the earlier stages' rows."""
    return resolve_refs(stage_refs(stage), stage.name, rows, refs)


def trial_config(base: Mapping[str, Any], given: Mapping[str, Any], refs: Mapping[str, str]) -> dict:
    """A trial's training config: the stage's base, its grid case, the searched values on top,
    and stage references ("stage:pretrain/method=natural") replaced by checkpoint paths. A value
    of "random" for init_checkpoint means no checkpoint."""
    values = trial_values(base, given)
    cfg = substitute(values, refs, flatten(values))
    if cfg.get("init_checkpoint") == "random":
        cfg["init_checkpoint"] = None
    return cfg


class DefineByRun:
    """Optuna define-by-run space: conditional parameters are suggested only when their
    condition holds. It does no computation (Ray's requirement) and pickles (Tune saves the
    searcher with the experiment)."""

    def __init__(self, specs: dict[str, ParamSpec], base: dict):
        self.specs = specs
        self.flat_base = flatten(base)

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for key, spec in self.specs.items():
            if any(chosen.get(c, self.flat_base.get(c)) != v for c, v in spec.when.items()):
                continue
            name = optuna_name(key)
            if spec.type == "float":
                chosen[key] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
            elif spec.type == "int":
                chosen[key] = trial.suggest_int(
                    name, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
                )
            else:
                chosen[key] = trial.suggest_categorical(name, list(spec.values))
        return None


def distribution(spec: ParamSpec):
    """The Optuna distribution ``DefineByRun`` suggests a parameter from."""
    import optuna

    if spec.type == "float":
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(
            int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
        )
    return optuna.distributions.CategoricalDistribution(list(spec.values))


def default_point(specs: dict[str, ParamSpec], base: dict) -> dict[str, Any]:
    """The resolved defaults of every searched parameter that its range admits (dotted keys)."""
    from trainables.config import resolve

    flat = flatten(to_dict(resolve(strip_refs(base))))
    point = {}
    for key, spec in specs.items():
        if any(flat.get(c) != v for c, v in spec.when.items()):
            continue
        v = flat.get(key)
        if v is None:
            continue
        if spec.type == "categorical" and v not in spec.values:
            continue
        if spec.type in ("float", "int") and not (spec.low <= v <= spec.high):
            continue
        point[key] = v
    return point


def grid_points(search: SearchSpec) -> list[dict]:
    """Every trial config of a grid search (Tune's nested form), once per seed of ``seeds`` (the
    seed then part of the trial's config), ``num_samples`` times over."""
    specs = search.param_specs()
    cases = [dict(c) for c in search.cases] or [None]
    points = []
    for values in itertools.product(*(list(s.values) for s in specs.values())):
        for case in cases:
            point = nested(dict(zip(specs, values)))
            if case is not None:
                point[CASE] = case
            points.append(json.loads(json.dumps(point, default=str)))
    if search.seeds:
        points = [{**p, "seed": s} for p in points for s in search.seeds]
    return points * search.num_samples


def seed_group(searched: Mapping[str, Any]) -> str:
    """The point a trial repeats across seeds: a short name of its searched values without its seed."""
    import hashlib

    point = {k: v for k, v in searched.items() if k != "seed"}
    return hashlib.sha256(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:8]


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
