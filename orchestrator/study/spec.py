"""A study file as typed, frozen data: what a study trains, what it searches, how its trials are
screened and its finalists certified, and with which resources. Each dataclass checks its own
fields (``validate``); the rules that span fields and stages are in ``orchestrator.study.rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainables.schema import build, check

from .names import PER_EPOCH, val_name

# The reports a study can ask for (``orchestrator.results.reports`` has one function per name).
REPORTS = (
    "generic", "sensitivity", "width", "scalability", "ablation", "compare", "init", "imagenet", "training_cost",
    "attack_strength",
)  # fmt: skip
MAX_SEEDS = 100  # seeds of one stage: every one is a trial per point
EXPORTS = ("robustbench",)  # certify.export: the claim formats a certified finalist can be written in

ReportName = Literal[
    "generic", "sensitivity", "width", "scalability", "ablation", "compare", "init", "imagenet", "training_cost",
    "attack_strength",
]  # fmt: skip


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
            check(
                self.low is not None and self.high is not None,
                where,
                "low/high",
                "both bounds for a numeric parameter",
                (self.low, self.high),
            )
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
    # every point once per seed, each a trial of its own whose ``seed`` differs; tables and
    # summaries give the mean and sample standard deviation across them, and a search (Optuna,
    # the finalists) chooses on a point's mean over its seeds
    seeds: tuple[int, ...] = ()
    # Optuna asks for the next trials only when every running trial has ended (Ray Tune's
    # ConcurrencyLimiter(batch=True)): what it suggests then does not depend on which trial
    # finished first, so one seed gives one result. false: a free slot starts a trial at once
    # (no wait for the slowest of a batch), at the price of suggestions that vary with timing.
    batch: bool = True

    def validate(self, where: str) -> None:
        check(self.num_samples >= 1, where, "num_samples", "an integer >= 1", self.num_samples)
        if self.seeds:
            check("seed" not in self.params, where, "seeds", "no searched 'seed' parameter beside them", "params.seed")
            check(len(self.seeds) <= MAX_SEEDS, where, "seeds", f"at most {MAX_SEEDS} seeds", len(self.seeds))
            check(len(set(self.seeds)) == len(self.seeds), where, "seeds", "distinct seeds", list(self.seeds))
            check(all(0 <= s < 2**32 for s in self.seeds), where, "seeds", "integers in [0, 2^32)", list(self.seeds))
        check(
            len(self.metrics) == len(self.modes), where, "mode", f"{len(self.metrics)} modes, one per metric", self.mode
        )
        check(all(m in ("max", "min") for m in self.modes), where, "mode", "max or min", self.mode)
        if self.cases:
            check(self.algorithm == "grid", where, "algorithm", "grid when cases are listed", self.algorithm)
            names = [c.get("name") if isinstance(c, Mapping) else None for c in self.cases]
            check(
                all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names),
                where,
                "cases",
                "mappings with distinct 'name's",
                names,
            )
        if len(self.metrics) > 1:
            check(self.algorithm == "optuna", where, "algorithm", "optuna for a multi-objective search", self.algorithm)
            check(
                self.scheduler.type == "none",
                where,
                "scheduler.type",
                "none for a multi-objective search",
                self.scheduler.type,
            )

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] if isinstance(self.mode, str) else list(self.mode)

    @property
    def selects(self) -> bool:
        """An Optuna search or an ASHA scheduler chooses among trials: it may see only numbers
        measured on the validation split."""
        return self.algorithm == "optuna" or self.scheduler.type == "asha"

    @property
    def finalist_metrics(self) -> list[str]:
        """What the finalists are chosen by: the screening's validation numbers (``val/robust_acc``),
        never the test split's."""
        return [val_name(m) for m in self.metrics]

    @property
    def objectives(self) -> list[str]:
        """What the searcher is told: the finalists' numbers; with ASHA, every trial's last
        per-epoch number on the validation split (a trial ASHA stopped has no screening, and
        the searcher must compare like with like). A grid tells nothing to anyone."""
        if not self.selects:
            return []
        if self.scheduler.type == "asha":
            return [self.rung_metric]
        return self.finalist_metrics

    @property
    def rung_metric(self) -> str:
        """The per-epoch number ASHA's rungs compare (the monitor, on the validation split)."""
        return PER_EPOCH.get(self.metrics[0], self.metrics[0])

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
    protocol: str = "quick"  # the certification of the finalists, on the test split
    overrides: dict = field(default_factory=dict)  # protocol budgets, e.g. {n: 1000, autoattack.n: 500}
    transfer_source: str | None = None  # checkpoint path or "stage:NAME/key=value"
    # the screening evaluation on the validation split (when the trial has one): what a search
    # selects on. A protocol name; "screen" is clean, FGSM, PGD-20 and a PGD eps curve
    screen: str = "screen"

    def validate(self, where: str) -> None:
        from trainables.evaluation import PROTOCOLS

        check(self.protocol in PROTOCOLS, where, "protocol", f"one of {', '.join(PROTOCOLS)}", self.protocol)
        check(self.screen in PROTOCOLS, where, "screen", f"one of {', '.join(PROTOCOLS)}", self.screen)


@dataclass(frozen=True)
class CertifySpec:
    """The certification phase: after a stage's trials, its finalists are evaluated with the
    stage's protocol on the test split, each finalist's images cut into shards that run as Ray
    tasks wherever the cluster has room."""

    top_k: int = 3  # a search's finalists: at most this many of its validation Pareto set (plus the paper defaults)
    shard_size: int = 500  # test images per shard (one Ray task with a trial worker's resources)
    save_adversarial: bool = False  # keep AutoAttack's adversarial images and log beside the checkpoint
    # claims written for each certified finalist beside its checkpoint: "robustbench" (a model_info
    # JSON in RobustBench's field names and units)
    export: tuple[str, ...] = ()

    def validate(self, where: str) -> None:
        check(self.top_k >= 1, where, "top_k", "an integer >= 1", self.top_k)
        check(self.shard_size >= 1, where, "shard_size", "an integer >= 1 (test images per shard)", self.shard_size)
        for fmt in self.export:
            check(fmt in EXPORTS, where, "export", f"one of {', '.join(EXPORTS)}", fmt)


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
            check(
                self.max_concurrent_trials >= 1,
                where,
                "max_concurrent_trials",
                "an integer >= 1",
                self.max_concurrent_trials,
            )
        check(self.max_failures >= 0, where, "max_failures", "an integer >= 0", self.max_failures)


@dataclass(frozen=True)
class StageSpec:
    name: str = "main"
    base: dict = field(default_factory=dict)  # trainables TrainConfig keys
    search: SearchSpec = field(default_factory=SearchSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    certify: CertifySpec = field(default_factory=CertifySpec)
    # an evaluation stage: it trains nothing; its trials are these checkpoints, each certified
    # with the stage's protocol like a training stage's finalists. Each entry: ``name``,
    # ``checkpoint`` (one of ours by path, an earlier stage's by reference, or published weights
    # with their format, ``trades_wrn:/path``) and, for published weights, the TrainConfig keys
    # that describe them (``model``, ``model_args``, ``dataset``, ``eps``, ``data``)
    checkpoints: tuple[dict, ...] | None = None

    @property
    def evaluates(self) -> bool:
        return self.checkpoints is not None


@dataclass(frozen=True)
class SmokeSpec:
    """What ``--smoke-test`` changes beyond the generic shrink (digits, 3 epochs, small eval)."""

    base: dict = field(default_factory=dict)  # applied to every stage's base
    params: dict = field(default_factory=dict)  # replaces these search parameters in the stages that search them
    num_samples: int | None = None  # an Optuna stage's trials in a smoke test (a grid keeps at most 3 repeats)
    cases: tuple[str, ...] = ()  # keeps only these named cases in the stages that have cases


@dataclass(frozen=True)
class DeviationSpec:
    """A setting a study keeps different from the paper's on purpose, and why (the settings test
    accepts it, the dry run and the report print it)."""

    key: str  # a settings cell's key (a training-config key, ``precision`` or ``evaluation.*``)
    reason: str
    where: dict = field(default_factory=dict)  # the trials it applies to (method, model, case, ...); {} = all

    def validate(self, where: str) -> None:
        check(bool(self.key.strip()), where, "key", "a settings key", self.key)
        check(
            len(self.reason.strip()) >= 10,
            where,
            "reason",
            "why the study differs from the paper (a sentence)",
            self.reason,
        )


@dataclass(frozen=True)
class Study:
    """A study file, parsed and validated: every stage typed, its base merged with the shared one.

    A file without ``stages:`` gives its ``search``, ``evaluation`` and ``certify`` at the top level
    (one stage, named ``main``); a file with ``stages:`` gives them inside each stage."""

    name: str
    description: str = ""
    report: ReportName = "generic"  # which report to write (orchestrator.results.reports)
    seed: int = 0
    base: dict = field(default_factory=dict)  # shared by every stage (already merged into each)
    stages: tuple[StageSpec, ...] = ()
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    smoke: SmokeSpec = field(default_factory=SmokeSpec)
    paper: str | None = None  # paper-numbers file (orchestrator/study/paper_numbers/NAME.yaml)
    settings: str | None = None  # the paper's setting, cell by cell (orchestrator/study/paper_settings/NAME.yaml)
    deviations: tuple[DeviationSpec, ...] = ()  # where this study differs from those settings on purpose
    staged: bool = field(default=False, init=False, repr=False)  # the file lists stages (errors say stages[i])


@dataclass(frozen=True)
class Plan:
    """A study as it will run: its stages after ``--smoke-test`` and command-line overrides."""

    study: Study
    source: str
    stages: tuple[StageSpec, ...]
    resources: ResourceSpec
    seed: int
