"""Study files: what a study trains, what it searches, and with which resources.

A study is one or more *stages* (most have one; ``init`` trains starting checkpoints in a
first stage). Each stage has a ``base`` training config (trainables' TrainConfig keys), a
``search`` over some of its keys, and an ``evaluation`` protocol. Everything is validated here,
before Ray starts: unknown keys, wrong types and out-of-range values are one error naming the
field. Search ranges are checked by resolving the training config at their corners, so a range
that leaves the valid domain (alpha above 1, a negative Delta) is refused by the same rule that
trainables applies.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from trainables.schema import build, check, deep_merge, flatten, load_yaml_file, set_nested, to_dict
from trainables.errors import ConfigError

from .splits import val_name
from .stages import check_ref, is_ref, retarget_refs, strip_refs


def resolve(raw):
    """trainables' config resolution, imported when first needed (it loads torch)."""
    from trainables.config import resolve as _resolve

    return _resolve(raw)



@dataclass(frozen=True)
class ParamSpec:
    type: Literal["float", "int", "categorical"] = "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[Any, ...] | None = None
    when: dict = field(default_factory=dict)  # only when these keys have these values

    def validate(self, where: str) -> None:
        if self.type in ("float", "int"):
            check(self.low is not None and self.high is not None, where, "low/high", "both bounds for a numeric parameter", (self.low, self.high))
            check(self.low <= self.high, where, "low", f"a number <= high ({self.high})", self.low)
            if self.log:
                check(self.low > 0, where, "low", "a number > 0 for a log-scale parameter", self.low)
        else:
            check(bool(self.values), where, "values", "a non-empty list", self.values)

    def corners(self) -> list[Any]:
        if self.type == "float":
            return [float(self.low), float(self.high)]
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return list(self.values)


@dataclass(frozen=True)
class SchedulerSpec:
    type: Literal["none", "asha"] = "none"
    grace_period: int = 1  # epochs before a trial can be stopped
    reduction_factor: float = 2.0

    def validate(self, where: str) -> None:
        check(self.grace_period >= 1, where, "grace_period", "an integer >= 1", self.grace_period)
        check(self.reduction_factor > 1, where, "reduction_factor", "a number > 1", self.reduction_factor)


@dataclass(frozen=True)
class SearchSpec:
    algorithm: Literal["optuna", "grid"] = "grid"
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"  # tpe works from the first trials, with one objective or several
    num_samples: int = 1  # Optuna trials; for grid, repeats of the whole grid
    metric: str | tuple[str, ...] = "robust_acc"
    mode: str | tuple[str, ...] = "max"
    enqueue_defaults: bool = True  # Optuna's first point is the resolved default of every parameter
    params: dict = field(default_factory=dict)  # "a.b" -> ParamSpec mapping
    # named config variants crossed with the grid (e.g. the ablation's module combinations):
    # each is {name: ..., <TrainConfig keys>...}
    cases: tuple[dict, ...] = ()
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)

    def validate(self, where: str) -> None:
        check(self.num_samples >= 1, where, "num_samples", "an integer >= 1", self.num_samples)
        metrics = [self.metric] if isinstance(self.metric, str) else list(self.metric)
        modes = [self.mode] if isinstance(self.mode, str) else list(self.mode)
        check(len(metrics) == len(modes), where, "mode", f"{len(metrics)} modes, one per metric", self.mode)
        check(all(m in ("max", "min") for m in modes), where, "mode", "max or min", self.mode)
        if self.cases:
            check(self.algorithm == "grid", where, "algorithm", "grid when cases are listed", self.algorithm)
            names = [c.get("name") if isinstance(c, Mapping) else None for c in self.cases]
            check(all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names), where,
                  "cases", "mappings with distinct 'name's", names)
        if len(metrics) > 1:
            check(self.algorithm == "optuna", where, "algorithm", "optuna for a multi-objective search", self.algorithm)
            check(self.scheduler.type == "none", where, "scheduler.type", "none for a multi-objective search", self.scheduler.type)

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def selects(self) -> bool:
        """An Optuna search or an ASHA scheduler chooses among trials: it may see only numbers
        measured on the validation split."""
        return self.algorithm == "optuna" or self.scheduler.type == "asha"

    @property
    def objectives(self) -> list[str]:
        """The names Optuna and ASHA are given: an accuracy of a selecting stage is its
        validation number (``val/robust_acc``), never the test split's (``robust_acc``)."""
        return [val_name(m) if self.selects else m for m in self.metrics]

    @property
    def modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    def param_specs(self, where: str = "search") -> dict[str, ParamSpec]:
        """The searched parameters, parsed once (when the stage is validated) and kept."""
        cached = self.__dict__.get("_specs")
        if cached is None:
            cached = {}
            for key, raw in self.params.items():
                if not isinstance(raw, Mapping):
                    raw = {"values": raw} if isinstance(raw, list) else {"values": [raw]}
                cached[key] = build(ParamSpec, raw, f"{where}.params.{key}")
            object.__setattr__(self, "_specs", cached)  # frozen: a parse cache, not a change
        return cached


@dataclass(frozen=True)
class EvaluationSpec:
    protocol: str = "quick"  # the final evaluation, on the test split
    overrides: dict = field(default_factory=dict)  # protocol budgets, e.g. {n: 1000}
    transfer_source: str | None = None  # checkpoint path or "stage:NAME/key=value"
    # the screening evaluation on the validation split (when the trial has one): what a search
    # selects on. A protocol name; "screen" is clean, FGSM, PGD-20 and a PGD eps curve
    screen: str = "screen"

    def validate(self, where: str) -> None:
        from trainables.protocols import PROTOCOLS

        check(self.protocol in PROTOCOLS, where, "protocol", f"one of {', '.join(PROTOCOLS)}", self.protocol)
        check(self.screen in PROTOCOLS, where, "screen", f"one of {', '.join(PROTOCOLS)}", self.screen)


@dataclass(frozen=True)
class ResourceSpec:
    num_workers: int = 1  # Ray Train workers (DDP ranks) per trial
    gpus_per_worker: float = 0.0  # 0 on CPU-only machines; the sweep uses GPUs when asked
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int | None = None  # None = what the cluster can hold
    max_failures: int = 2  # worker-group restarts per trial (from the last checkpoint)

    def validate(self, where: str) -> None:
        check(self.num_workers >= 1, where, "num_workers", "an integer >= 1", self.num_workers)
        check(self.gpus_per_worker >= 0, where, "gpus_per_worker", "a number >= 0", self.gpus_per_worker)
        check(self.cpus_per_worker > 0, where, "cpus_per_worker", "a number > 0", self.cpus_per_worker)
        if self.max_concurrent_trials is not None:
            check(self.max_concurrent_trials >= 1, where, "max_concurrent_trials", "an integer >= 1", self.max_concurrent_trials)
        check(self.max_failures >= 0, where, "max_failures", "an integer >= 0", self.max_failures)


@dataclass(frozen=True)
class StageSpec:
    name: str = "main"
    base: dict = field(default_factory=dict)  # trainables TrainConfig keys
    search: SearchSpec = field(default_factory=SearchSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)


@dataclass(frozen=True)
class SmokeSpec:
    """What ``--smoke-test`` changes beyond the generic shrink (digits, 2 epochs, small eval)."""

    base: dict = field(default_factory=dict)  # applied to every stage's base
    params: dict = field(default_factory=dict)  # replaces these search parameters
    num_samples: int | None = None


@dataclass(frozen=True)
class Study:
    """A study file, parsed and validated: every stage typed, its base merged with the shared one.

    A file without ``stages:`` gives its ``search`` and ``evaluation`` at the top level (one stage,
    named ``main``); a file with ``stages:`` gives them inside each stage."""

    name: str
    description: str = ""
    report: str = "generic"  # which report to write (orchestrator.reports)
    seed: int = 0
    base: dict = field(default_factory=dict)  # shared by every stage (already merged into each)
    stages: tuple[StageSpec, ...] = ()
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    smoke: SmokeSpec = field(default_factory=SmokeSpec)
    paper: str | None = None  # paper-numbers file (orchestrator/paper_numbers/NAME.yaml)
    staged: bool = field(default=False, init=False, repr=False)  # the file lists stages (errors say stages[i])

    def validate(self, where: str) -> None:
        from .reports import REPORTS, paper_numbers

        check(bool(STUDY_NAME.match(self.name)) and ".." not in self.name, where, "name",
              "a plain name (letters, digits, '_', '-', '.'; it names directories)", self.name)
        check(0 <= self.seed < 2**32, where, "seed", "an integer in [0, 2^32)", self.seed)
        check(self.report in REPORTS, where, "report", f"one of {', '.join(sorted(REPORTS))}", self.report)
        if self.paper is not None:
            paper_numbers(self.paper, where=f"{where}.paper" if where else "paper")  # exists and has cells
        names = [s.name for s in self.stages]
        check(len(set(names)) == len(names), where, "stages", "distinct stage names", names)


def study_dir() -> Path:
    import search_spaces

    return Path(search_spaces.__file__).resolve().parent


def list_studies() -> dict[str, str]:
    """Study name -> one-line description, for every study file shipped with the package."""
    out = {}
    for path in sorted(study_dir().glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            out[path.stem] = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
        except yaml.YAMLError:
            out[path.stem] = "(unreadable)"
    return out


STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # used in directory and experiment names


def load_raw(name: str | None = None, path: str | None = None) -> tuple[dict, str]:
    """The study mapping and where it came from (for error messages). ``--study`` takes a
    shipped study's plain name; a path goes through ``--config``."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such study file")
    else:
        if not STUDY_NAME.match(name or "") or ".." in name:
            raise ConfigError(f"--study {name!r}: expected the name of a shipped study ({', '.join(list_studies())}); "
                              "give a file with --config")
        p = study_dir() / f"{name}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown study {name!r}; expected one of: {', '.join(list_studies())}")
    raw = load_yaml_file(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", p.stem)
    return raw, str(p)


def parse(raw: Mapping[str, Any], where: str) -> Study:
    """The whole study file checked in one pass: top-level keys, every stage (its merged base
    resolved, every search-range corner resolved, its protocol and stage references), the
    report and paper names. Nothing is left raw for a later step to discover."""
    raw = dict(raw)
    staged = "stages" in raw
    if staged:
        stray = [k for k in ("search", "evaluation") if k in raw]
        if stray:
            raise ConfigError(f"{where}: {stray[0]}: give it inside each entry of stages (a study with stages has no top-level {stray[0]})")
        stage_raws = raw.pop("stages")
        if not isinstance(stage_raws, list) or not stage_raws:
            raise ConfigError(f"{where}: stages: expected a non-empty list of stages, got {stage_raws!r}")
    else:
        stage_raws = [{"name": "main", "search": raw.pop("search", {}), "evaluation": raw.pop("evaluation", {})}]
    try:
        study = build(Study, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    stages = []
    for i, sraw in enumerate(stage_raws):
        at = f"{where}: stages[{i}]" if staged else where
        if not isinstance(sraw, Mapping):
            raise ConfigError(f"{at}: expected a mapping, got {sraw!r}")
        sraw = dict(sraw)
        sraw["base"] = deep_merge(study.base, sraw.get("base") or {})
        sraw["base"].setdefault("seed", study.seed)
        stages.append(_build_stage(sraw, at, staged, [s.name for s in stages]))
    study = replace(study, stages=tuple(stages))
    object.__setattr__(study, "staged", staged)  # frozen: set once, while parsing
    try:
        study.validate("")  # stage names distinct
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return study


def _build_stage(sraw: Mapping[str, Any], where: str, staged: bool, earlier: list[str]) -> StageSpec:
    try:
        stage = build(StageSpec, sraw, "stages" if staged else "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    stage = _with_validation_split(stage, where)
    _validate_stage(stage, where, earlier)
    return stage


def _with_validation_split(stage: StageSpec, where: str) -> StageSpec:
    """A selecting stage trains on the training split minus a validation split: the study's
    ``data.val_size``, or the data set's default (digits 20 %, CIFAR 5,000, ImageNet 10,000),
    written into the stage's base so that every trial's saved config says which."""
    if not stage.search.selects:
        return stage
    from trainables.config import TrainConfig
    from trainables.data import DATASETS

    data = dict(stage.base.get("data") or {})
    size = data.get("val_size")
    if size is None:
        dataset = stage.base.get("dataset", TrainConfig.dataset)
        if not isinstance(dataset, str) or dataset not in DATASETS:
            return stage  # an unknown data set is refused by the stage's own checks
        data["val_size"] = DATASETS.get(dataset).val_default
        return replace(stage, base={**stage.base, "data": data})
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size <= 0:
        raise ConfigError(f"{where}: base.data.val_size: expected a count >= 1 or a fraction in (0, 1) where a stage "
                          f"selects (an Optuna search or ASHA selects on the validation split), got {size}")
    return stage


@dataclass(frozen=True)
class Plan:
    """A study as it will run: its stages after ``--smoke-test`` and command-line overrides."""

    study: Study
    source: str
    stages: tuple[StageSpec, ...]
    resources: ResourceSpec
    seed: int


def plan(study: Study, source: str, *, smoke: bool = False, overrides: Mapping[str, Any] | None = None) -> Plan:
    """The parsed study with ``--smoke-test`` and the command line applied; a stage that changed is
    checked again by the same rules (an override can leave the valid domain)."""
    overrides = dict(overrides or {})
    res = study.resources
    res_over = {k: overrides.pop(k) for k in list(overrides) if k in ("num_workers", "gpus_per_worker", "max_concurrent_trials")}
    if smoke:  # a smoke test runs on a laptop's CPUs; DDP stays when the study uses it
        res_over.setdefault("gpus_per_worker", 0.0)
        res_over.setdefault("num_workers", min(res.num_workers, 2))
        res_over.setdefault("cpus_per_worker", 1.0)
    base_over = overrides.pop("base", {})
    if res_over:
        res = replace(res, **res_over)
        res.validate("resources")
    new_seed = "seed" in overrides
    seed = overrides.pop("seed", study.seed)
    num_samples = overrides.pop("num_samples", None)
    if not (smoke or base_over or new_seed or num_samples is not None):
        return Plan(study, source, study.stages, res, seed)
    stages = []
    for i, stage in enumerate(study.stages):
        where = f"{source}: stages[{i}]" if study.staged else source
        sraw = to_dict(stage)
        sraw["base"] = deep_merge(sraw["base"], base_over)
        if new_seed:
            sraw["base"]["seed"] = seed
        if smoke:
            sraw = _shrink(sraw, study.smoke)
        if num_samples is not None:
            sraw["search"]["num_samples"] = num_samples
        stages.append(_build_stage(sraw, where, study.staged, [s.name for s in stages]))
    return Plan(study, source, tuple(stages), res, seed)


def _shrink(sraw: dict, smoke: SmokeSpec) -> dict:
    """--smoke-test: the same path in seconds per trial on digits (3 epochs, small evaluation)."""
    s = copy.deepcopy(sraw)
    base = s["base"]
    base["dataset"] = "digits"
    base.pop("data", None)
    base["epochs"] = min(int(base.get("epochs") or 3), 3)
    base.pop("batch_size", None)
    base["monitor"] = {**base.get("monitor", {}), "n": 64, "pgd_steps": 5}
    if base.get("model") not in (None, "small_cnn") and "model" not in smoke.base:
        base["model"] = "small_cnn"
        base["model_args"] = {"width": 8}
    s["base"] = deep_merge(base, smoke.base)
    search = dict(s.get("search", {}))
    params = dict(search.get("params", {}))
    params.update(smoke.params)
    search["params"] = params
    search["num_samples"] = smoke.num_samples or min(int(search.get("num_samples", 1)), 3)
    sched = dict(search.get("scheduler", {}))
    if sched.get("type") == "asha":
        sched["grace_period"] = 1
        search["scheduler"] = sched
    s["search"] = search
    if "model" not in smoke.base:  # every model became small_cnn: so do the references' conditions
        s = retarget_refs(s, "model", "small_cnn")
    ev = dict(s.get("evaluation", {}))
    from trainables.protocols import get_protocol, smoke_overrides

    try:  # the study's own protocol, every attack kept, budgets cut (bad names fail in validation)
        protocol = get_protocol(ev.get("protocol", "quick"), ev.get("overrides") or {})
        ev["overrides"] = {**(ev.get("overrides") or {}), **smoke_overrides(protocol)}
    except ConfigError:
        pass
    s["evaluation"] = ev
    return s


# what every trial reports per epoch (trainables.loop) and with its final result (orchestrator.worker)
EPOCH_METRICS = ("loss", "train_acc", "lr", "epoch_time_s", "images_per_s", "monitor_clean_acc", "monitor_pgd_acc",
                 "clean_acc", "robust_acc")
FINAL_METRICS = ("mean_epoch_time_s", "mean_images_per_s")


def reported_metrics(stage: StageSpec) -> set[str]:
    """The metric names a stage's trials report: the loop's, the method's, the protocol's."""
    from trainables.eval_attacks import metric_keys
    from trainables.methods import METHODS
    from trainables.protocols import get_protocol

    methods = {stage.base.get("method", "sprout")}
    for key, spec in stage.search.param_specs().items():
        if key == "method":
            methods |= set(spec.values or ())
    methods |= {c["method"] for c in stage.search.cases if "method" in c}
    out = set(EPOCH_METRICS) | set(FINAL_METRICS)
    for m in methods:
        if m in METHODS:
            out |= set(METHODS.get(m).epoch_metric_names)
    out |= set(metric_keys(get_protocol(stage.evaluation.protocol, stage.evaluation.overrides)))
    return out


def screened_metrics(stage: StageSpec) -> set[str]:
    """The accuracies the screening evaluation measures on the validation split (and the
    per-image worst case over them, ``robust_acc``)."""
    from trainables.eval_attacks import metric_keys
    from trainables.protocols import get_protocol

    return {m for m in metric_keys(get_protocol(stage.evaluation.screen)) if m.endswith("_acc")} | {"clean_acc", "robust_acc"}


def _validate_stage(stage: StageSpec, where: str, earlier: list[str]) -> None:
    specs = stage.search.param_specs(f"{where}: search")
    if stage.search.algorithm == "grid":
        for k, spec in specs.items():
            if spec.type != "categorical":
                raise ConfigError(f"{where}: search.params.{k}: a grid study lists values, not a {spec.type} range")
            if spec.when:
                raise ConfigError(f"{where}: search.params.{k}.when: conditional parameters need algorithm: optuna")
    for k, spec in specs.items():
        for cond in spec.when:
            if cond not in specs and cond not in flatten(stage.base):
                raise ConfigError(f"{where}: search.params.{k}.when: {cond!r} is neither a searched parameter nor a base key")
    base = strip_refs(stage.base)
    try:
        epochs = resolve(base).epochs
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None
    grace = stage.search.scheduler.grace_period
    if stage.search.scheduler.type == "asha" and grace > epochs:
        raise ConfigError(f"{where}: search.scheduler.grace_period: expected at most the {epochs} epochs a trial trains, got {grace}")
    # every corner of every range must resolve: the search cannot leave the valid domain
    for k, spec in specs.items():
        for v in spec.corners():
            if is_ref(v):
                check_ref(v, f"{where}: search.params.{k}", earlier)
                continue
            trial = copy.deepcopy(base)
            for ck, cv in spec.when.items():
                set_nested(trial, ck.split("."), cv)
            set_nested(trial, k.split("."), v)
            try:
                resolve(trial)
            except ConfigError as e:
                raise ConfigError(f"{where}: search.params.{k}: value {v!r} is invalid: {e}") from None
    for i, case in enumerate(stage.search.cases):
        trial = deep_merge(base, {k: v for k, v in case.items() if k != "name"})
        try:
            resolve(strip_refs(trial))
        except ConfigError as e:
            raise ConfigError(f"{where}: search.cases[{i}] ({case['name']}): {e}") from None
    for key, v in flatten(stage.base).items():
        if is_ref(v):
            check_ref(v, f"{where}: base.{key}", earlier)
    if is_ref(stage.evaluation.transfer_source):
        check_ref(stage.evaluation.transfer_source, f"{where}: evaluation.transfer_source", earlier)
    from trainables.protocols import get_protocol

    try:
        get_protocol(stage.evaluation.protocol, stage.evaluation.overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: evaluation: {e}") from None
    metrics = stage.search.metrics
    known = reported_metrics(stage)
    for m in metrics:
        if m not in known:
            raise ConfigError(f"{where}: search.metric: {m!r} is not reported by this stage's trials; expected one of: "
                              f"{', '.join(sorted(known))}")
    if stage.search.selects:
        screened = screened_metrics(stage)
        for m in metrics:
            if m.endswith("_acc") and m not in screened:
                raise ConfigError(f"{where}: search.metric: {m!r} is not measured on the validation split a search "
                                  f"selects on (the test split is read only by the final evaluation); the screening "
                                  f"protocol {stage.evaluation.screen!r} reports: {', '.join(sorted(screened))}")
    if stage.search.scheduler.type == "asha" and metrics[0] not in ("robust_acc", "clean_acc", "loss"):
        raise ConfigError(f"{where}: search.metric: ASHA needs a metric reported every epoch (robust_acc, clean_acc or loss), got {metrics[0]!r}")


# ----------------------------------------------------------------------------- search space
def optuna_key(key: str) -> str:
    return key.replace(".", "/")


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
            name = optuna_key(key)
            if spec.type == "float":
                chosen[key] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
            elif spec.type == "int":
                chosen[key] = trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log,
                                                step=int(spec.step or 1))
            else:
                chosen[key] = trial.suggest_categorical(name, list(spec.values))
        return None


def default_point(specs: dict[str, ParamSpec], base: dict) -> dict[str, Any]:
    """The resolved defaults of every searched parameter, with Optuna's flattened keys
    (a point with nested keys would be silently ignored)."""
    resolved = to_dict(resolve(strip_refs(base)))
    point = {}
    flat = flatten(resolved)
    for key, spec in specs.items():
        if spec.when:
            if any(flat.get(c) != v for c, v in spec.when.items()):
                continue
        if key in flat and flat[key] is not None:
            v = flat[key]
            if spec.type == "categorical" and v not in spec.values:
                continue
            if spec.type in ("float", "int") and not (spec.low <= v <= spec.high):
                continue
            point[optuna_key(key)] = v
    return point
