"""The rules a study file must follow beyond each field's own type and range: one function per
rule, each raising one ``ConfigError`` that names the field and what was expected. They run when
a study is parsed and again on every stage that ``--smoke-test`` or the command line changed,
so nothing invalid reaches Ray.

Search ranges are checked by resolving the training config at their corners, so a range that
leaves the valid domain (alpha above 1, a negative Delta) is refused by the same rule that
trainables applies.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trainables.errors import ConfigError
from trainables.schema import deep_merge, flatten, set_nested

from .names import EPOCH_METRICS, FINAL_METRICS, PER_EPOCH
from .paper import load_paper_numbers, load_paper_settings
from .refs import check_ref, collect_refs, is_ref, is_template, strip_refs
from .space import stage_refs
from .spec import REPORTS, StageSpec, Study

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")  # used in directory and experiment names


def resolve(raw):
    """trainables' config resolution, imported when first needed (it loads torch)."""
    from trainables.config import resolve as _resolve

    return _resolve(raw)


# ----------------------------------------------------------------------------- the study
def check_study(study: Study, where: str) -> None:
    """The study's own fields: its name names directories, its report and paper file exist,
    its stages have distinct names."""

    def fail(field: str, expected: str, got: Any) -> None:
        raise ConfigError(f"{where}: {field}: expected {expected}, got {got!r}")

    if not STUDY_NAME.match(study.name) or ".." in study.name:
        fail("name", "a plain name (letters, digits, '_', '-', '.'; it names directories)", study.name)
    if not 0 <= study.seed < 2**32:
        fail("seed", "an integer in [0, 2^32)", study.seed)
    if study.report not in REPORTS:
        fail("report", f"one of {', '.join(REPORTS)}", study.report)
    if study.paper is not None:
        try:
            load_paper_numbers(study.paper)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if study.settings is not None:
        try:
            load_paper_settings(study.settings)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if study.deviations and study.settings is None:
        fail("deviations", "a settings: file whose cells they depart from", [d.key for d in study.deviations])
    names = [s.name for s in study.stages]
    if len(set(names)) != len(names):
        fail("stages", "distinct stage names", names)
    if study.stages:
        known = {c["name"] for s in study.stages for c in s.search.cases}
        unknown = [c for c in study.smoke.cases if c not in known]
        if unknown:
            fail("smoke.cases", f"names of the stages' cases ({', '.join(sorted(known)) or 'none'})", unknown[0])


# ----------------------------------------------------------------------------- a stage
def with_validation_split(stage: StageSpec, where: str) -> StageSpec:
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
        raise ConfigError(
            f"{where}: base.data.val_size: expected a count >= 1 or a fraction in (0, 1) where a stage "
            f"selects (an Optuna search or ASHA selects on the validation split), got {size}"
        )
    return stage


def check_stage(stage: StageSpec, where: str, earlier: list[str]) -> None:
    """Every rule of one stage, in the order a person would fix them."""
    _grid_lists_values(stage, where)
    _conditions_name_known_keys(stage, where)
    epochs = _base_resolves(stage, where)
    _asha_grace_within_training(stage, where, epochs)
    _ranges_stay_valid(stage, where, earlier)
    _cases_resolve(stage, where)
    _references_name_earlier_stages(stage, where, earlier)
    _templates_fill_per_grid_trial(stage, where, earlier)
    _protocols_exist(stage, where)
    _checkpoints_are_trials(stage, where, earlier)
    _metrics_are_reported(stage, where)
    _selection_reads_validation_only(stage, where)
    _asha_metric_is_per_epoch(stage, where)


def _base_resolves(stage: StageSpec, where: str) -> int:
    try:
        return resolve(strip_refs(stage.base)).epochs
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None


def _grid_lists_values(stage: StageSpec, where: str) -> None:
    if stage.search.algorithm != "grid":
        return
    for k, spec in stage.search.param_specs(f"{where}: search").items():
        if spec.type != "categorical":
            raise ConfigError(f"{where}: search.params.{k}: a grid study lists values, not a {spec.type} range")
        if spec.when:
            raise ConfigError(f"{where}: search.params.{k}.when: conditional parameters need algorithm: optuna")


def _conditions_name_known_keys(stage: StageSpec, where: str) -> None:
    specs = stage.search.param_specs(f"{where}: search")
    base = flatten(stage.base)
    for k, spec in specs.items():
        for cond in spec.when:
            if cond not in specs and cond not in base:
                raise ConfigError(
                    f"{where}: search.params.{k}.when: {cond!r} is neither a searched parameter nor a base key"
                )


def _asha_grace_within_training(stage: StageSpec, where: str, epochs: int) -> None:
    grace = stage.search.scheduler.grace_period
    if stage.search.scheduler.type == "asha" and grace > epochs:
        raise ConfigError(
            f"{where}: search.scheduler.grace_period: expected at most the {epochs} epochs a trial trains, got {grace}"
        )


def _ranges_stay_valid(stage: StageSpec, where: str, earlier: list[str]) -> None:
    """Every corner of every range resolves: the search cannot leave the valid domain."""
    base = strip_refs(stage.base)
    for k, spec in stage.search.param_specs(f"{where}: search").items():
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


def _cases_resolve(stage: StageSpec, where: str) -> None:
    base = strip_refs(stage.base)
    for i, case in enumerate(stage.search.cases):
        try:
            resolve(strip_refs(deep_merge(base, {k: v for k, v in case.items() if k != "name"})))
        except ConfigError as e:
            raise ConfigError(f"{where}: search.cases[{i}] ({case['name']}): {e}") from None


CHECKPOINT_KEYS = ("name", "checkpoint", "method", "model", "model_args", "dataset", "eps", "data")


def _checkpoints_are_trials(stage: StageSpec, where: str, earlier: list[str]) -> None:
    """An evaluation stage lists at least one checkpoint, each named once, and searches nothing."""
    if not stage.evaluates:
        return
    from trainables.published import split_format

    at = f"{where}: checkpoints"
    if not stage.checkpoints:
        raise ConfigError(f"{at}: expected at least one checkpoint to evaluate (an evaluation stage trains nothing)")
    s = stage.search
    if s.params or s.cases or s.seeds or s.algorithm != "grid" or s.num_samples != 1:
        raise ConfigError(f"{where}: search: expected none in an evaluation stage (its trials are its checkpoints)")
    names = []
    for i, entry in enumerate(stage.checkpoints):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{at}[{i}]: expected a mapping with name and checkpoint, got {entry!r}")
        name, ck = entry.get("name"), entry.get("checkpoint")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{at}[{i}].name: expected letters, digits, '_', '-' or '.', got {name!r}")
        if not isinstance(ck, str) or not ck:
            raise ConfigError(f"{at}[{i}].checkpoint: expected a path, a format:path or a stage reference, got {ck!r}")
        unknown = sorted(set(entry) - set(CHECKPOINT_KEYS))
        if unknown:
            raise ConfigError(f"{at}[{i}].{unknown[0]}: unknown key; expected one of {', '.join(CHECKPOINT_KEYS)}")
        if is_ref(ck):
            check_ref(ck, f"{at}[{i}].checkpoint", earlier)
        else:
            try:
                split_format(ck)
            except ConfigError as e:
                raise ConfigError(f"{at}[{i}].checkpoint: {e}") from None
        names.append(name)
    if len(set(names)) != len(names):
        raise ConfigError(f"{at}: expected distinct names, got {names}")


def _references_name_earlier_stages(stage: StageSpec, where: str, earlier: list[str]) -> None:
    for key, v in flatten(stage.base).items():
        if is_ref(v):
            check_ref(v, f"{where}: base.{key}", earlier)
    if is_ref(stage.evaluation.transfer_source):
        check_ref(stage.evaluation.transfer_source, f"{where}: evaluation.transfer_source", earlier)


def _templates_fill_per_grid_trial(stage: StageSpec, where: str, earlier: list[str]) -> None:
    """A reference with ``{key}`` is filled from each trial's own values: only a grid's trials are
    known before they run, and every filled reference must name an earlier stage."""
    templates = sorted(r for r in collect_refs(stage) if is_template(r))
    if not templates:
        return
    if stage.search.algorithm != "grid":
        raise ConfigError(
            f"{where}: {templates[0]!r}: a reference with {{key}} is filled per trial of a grid search; "
            f"this stage searches with {stage.search.algorithm}"
        )
    for ref in sorted(stage_refs(stage)):
        check_ref(ref, f"{where}: {templates[0]!r}", earlier)


def _protocols_exist(stage: StageSpec, where: str) -> None:
    from trainables.evaluation import get_protocol

    try:
        get_protocol(stage.evaluation.protocol, stage.evaluation.overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: evaluation: {e}") from None


def reported_metrics(stage: StageSpec) -> set[str]:
    """The metric names a stage's trials and their certification report: the loop's, the
    methods', the protocol's."""
    from trainables.evaluation import get_protocol, metric_keys
    from trainables.methods import METHODS

    methods = {stage.base.get("method", "sprout")}
    for key, spec in stage.search.param_specs().items():
        if key == "method":
            methods |= set(spec.values or ())
    methods |= {c["method"] for c in stage.search.cases if "method" in c}
    out = {*EPOCH_METRICS, *FINAL_METRICS, "robust_acc"}
    for m in methods:
        if m in METHODS:
            out |= set(METHODS.get(m).epoch_metric_names)
    out |= set(metric_keys(get_protocol(stage.evaluation.protocol, stage.evaluation.overrides)))
    return out


def screened_metrics(stage: StageSpec) -> set[str]:
    """The accuracies the screening evaluation measures on the validation split (and the
    per-image worst case over them, ``robust_acc``)."""
    from trainables.evaluation import get_protocol, metric_keys

    return {m for m in metric_keys(get_protocol(stage.evaluation.screen)) if m.endswith("_acc")} | {
        "clean_acc",
        "robust_acc",
    }


def _metrics_are_reported(stage: StageSpec, where: str) -> None:
    known = reported_metrics(stage)
    for m in stage.search.metrics:
        if m not in known:
            raise ConfigError(
                f"{where}: search.metric: {m!r} is not reported by this stage's trials; expected one of: "
                f"{', '.join(sorted(known))}"
            )


def _selection_reads_validation_only(stage: StageSpec, where: str) -> None:
    if not stage.search.selects:
        return
    screened = screened_metrics(stage)
    for m in stage.search.metrics:
        if m.endswith("_acc") and m not in screened:
            raise ConfigError(
                f"{where}: search.metric: {m!r} is not measured on the validation split a search "
                f"selects on (the test split is read only by certification); the screening "
                f"protocol {stage.evaluation.screen!r} reports: {', '.join(sorted(screened))}"
            )


def _asha_metric_is_per_epoch(stage: StageSpec, where: str) -> None:
    metric = stage.search.metrics[0]
    if stage.search.scheduler.type == "asha" and metric not in PER_EPOCH:
        raise ConfigError(
            f"{where}: search.metric: ASHA needs a metric reported every epoch ({', '.join(PER_EPOCH)}), got {metric!r}"
        )
