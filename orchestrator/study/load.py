"""Study files: loading, parsing and planning.

A study is one or more *stages* (most have one; ``init`` trains starting checkpoints in a first
stage). Each stage has a ``base`` training config (trainables' TrainConfig keys), a ``search``
over some of its keys, an ``evaluation`` (the screening on validation, the protocol that
certifies the finalists on test) and a ``certify`` section. ``parse`` checks the whole file in
one pass (``orchestrator.study.rules``), before Ray starts; ``plan`` applies ``--smoke-test``
and the command line and checks every changed stage again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError
from trainables.schema import build, deep_merge, load_yaml_file, to_dict

from .refs import is_ref, retarget_refs
from .rules import STUDY_NAME, check_stage, check_study, with_validation_split
from .spec import Plan, SmokeSpec, StageSpec, Study

DEFAULT_STUDY = "sensitivity"  # what `sweep.py` runs with no arguments
STAGE_SECTIONS = ("search", "evaluation", "certify")  # given per stage, or at the top level of a one-stage file
GENERIC_STEMS = ("checkpoint", "model", "model_best", "best", "final", "weights")
CERTIFY_PROTOCOL = "standard"  # --certify without --protocol: AutoAttack on the whole test split, PGD beside it
SMOKE_SHARD_SIZE = 50  # --smoke-test cuts each finalist's test images into shards of this many


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


def load_raw(name: str | None = None, path: str | None = None) -> tuple[dict, str]:
    """The study mapping and where it came from (for error messages). ``--study`` takes a
    shipped study's plain name; a path goes through ``--config``."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such study file")
    else:
        if not STUDY_NAME.match(name or "") or ".." in name:
            raise ConfigError(
                f"--study {name!r}: expected the name of a shipped study ({', '.join(list_studies())}); "
                "give a file with --config"
            )
        p = study_dir() / f"{name}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown study {name!r}; expected one of: {', '.join(list_studies())}")
    raw = load_yaml_file(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", p.stem)
    return raw, str(p)


def certify_study(spec: str, *, model: str | None, dataset: str | None, protocol: str | None) -> tuple[dict, str]:
    """``--certify FILE``: a one-stage evaluation study of that checkpoint (one of ours, or
    published weights as ``FORMAT:FILE``, which need ``--model`` and ``--dataset``)."""
    import re

    from trainables.published import split_format

    try:
        fmt, path = split_format(spec)
    except ConfigError as e:
        raise ConfigError(f"--certify: {e}") from None
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"--certify {path}: no such checkpoint file")
    if fmt and not model:
        raise ConfigError(f"--model: expected the architecture of the published {fmt} weights (for example wrn)")
    if fmt and not dataset:
        raise ConfigError(f"--dataset: expected the data set the published {fmt} weights were trained on")
    stem = p.stem if p.stem not in GENERIC_STEMS else f"{p.parent.name}-{p.stem}"  # runs/x/checkpoint.pt: x-checkpoint
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "checkpoint"
    base = {k: v for k, v in (("model", model), ("dataset", dataset)) if v}
    raw = {
        "name": f"certify-{name}"[:100],
        "description": f"certification of {spec}",
        "base": base,
        "checkpoints": [{"name": name[:40], "checkpoint": f"{fmt}:{p}" if fmt else str(p)}],
        "evaluation": {"protocol": protocol or CERTIFY_PROTOCOL},
        "certify": {"shard_size": 500},
    }
    return raw, f"--certify {spec}"


def publish(raw: Mapping[str, Any], published: Mapping[str, str], where: str) -> dict:
    """``--published TARGET=FORMAT:FILE``: published weights take the place of what a stage trains.
    TARGET is a stage (it becomes an evaluation stage of that file, under its own name, so later
    stages start from it as they would from the model it trained) or STAGE/CASE (that case leaves
    the stage's grid; an evaluation stage STAGE-published after it certifies the file under the
    case's name with the stage's protocol). The study's ``origin`` deviations for that arm go."""
    raw = copy.deepcopy(dict(raw))
    stages = raw.get("stages")
    if not isinstance(stages, list):
        raise ConfigError(f"--published: {where} has no stages: name a stage of a study with stages")
    for target, spec in published.items():
        name, _, case = target.partition("/")
        i = next((k for k, st in enumerate(stages) if isinstance(st, Mapping) and st.get("name") == name), None)
        if i is None:
            names = [st.get("name") for st in stages if isinstance(st, Mapping)]
            raise ConfigError(f"--published {target}: no stage {name!r}; expected one of {', '.join(map(str, names))}")
        stage = dict(stages[i])
        base = {**(raw.get("base") or {}), **(stage.get("base") or {})}
        if not case:
            entry = {"name": name, "checkpoint": spec, "method": base.get("method", "natural")}
            stages[i] = {k: v for k, v in stage.items() if k != "search"} | {"checkpoints": [entry]}
            _drop_origin(raw, base.get("method"), base.get("model"))
            continue
        cases = list((stage.get("search") or {}).get("cases") or [])
        chosen = next((c for c in cases if isinstance(c, Mapping) and c.get("name") == case), None)
        if chosen is None:
            raise ConfigError(f"--published {target}: stage {name} has no case {case!r}")
        stage["search"] = {**stage["search"], "cases": [c for c in cases if c is not chosen]}
        stages[i] = stage
        method = chosen.get("method", base.get("method", "natural"))
        entry = {"name": case, "checkpoint": spec, "method": method}
        extra = {k: v for k, v in stage.items() if k in ("base", "evaluation", "certify")}
        stages.insert(i + 1, {"name": f"{name}-published", **extra, "checkpoints": [entry]})
        _drop_origin(raw, method, base.get("model"))
    return raw


def _drop_origin(raw: dict, method: Any, model: Any) -> None:
    """The study's deviations that said this arm is trained, not published: no longer true."""
    keep = []
    for d in raw.get("deviations") or []:
        where = (d.get("where") or {}) if isinstance(d, Mapping) else {}
        arm = where.get("method") == method and where.get("model") in (None, model)  # this arm's own
        if not (isinstance(d, Mapping) and d.get("key") == "origin" and arm):
            keep.append(d)
    raw["deviations"] = keep


def parse(raw: Mapping[str, Any], where: str) -> Study:
    """The whole study file checked in one pass: top-level keys, every stage (its merged base
    resolved, every search-range corner resolved, its protocol and stage references), the
    report and paper names. Nothing is left raw for a later step to discover."""
    raw = dict(raw)
    staged = "stages" in raw
    if staged:
        stray = [k for k in STAGE_SECTIONS if k in raw]
        if stray:
            raise ConfigError(
                f"{where}: {stray[0]}: give it inside each entry of stages (a study with stages has no top-level {stray[0]})"
            )
        stage_raws = raw.pop("stages")
        if not isinstance(stage_raws, list) or not stage_raws:
            raise ConfigError(f"{where}: stages: expected a non-empty list of stages, got {stage_raws!r}")
    else:
        stage_raws = [{"name": "main", **{k: raw.pop(k, {}) for k in STAGE_SECTIONS}}]
        if "checkpoints" in raw:  # a one-stage evaluation study
            stage_raws[0]["checkpoints"] = raw.pop("checkpoints")
    try:
        study = build(Study, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    check_study(study, where)  # its own fields first, its stages next
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
    check_study(study, where)
    return study


def _build_stage(sraw: Mapping[str, Any], where: str, staged: bool, earlier: list[str]) -> StageSpec:
    try:
        stage = build(StageSpec, sraw, "stages" if staged else "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    stage = with_validation_split(stage, where)
    check_stage(stage, where, earlier)
    return stage


def plan(study: Study, source: str, *, smoke: bool = False, overrides: Mapping[str, Any] | None = None) -> Plan:
    """The parsed study with ``--smoke-test`` and then the command line applied (``--set`` wins
    over the smoke cut); a stage that changed is checked again by the same rules (an override can
    leave the valid domain)."""
    overrides = dict(overrides or {})
    res = study.resources
    res_over = {
        k: overrides.pop(k) for k in list(overrides) if k in ("num_workers", "gpus_per_worker", "max_concurrent_trials")
    }
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
    seeds = overrides.pop("seeds", None)
    if not (smoke or base_over or new_seed or num_samples is not None or seeds):
        return Plan(study, source, study.stages, res, seed)
    stages = []
    for i, stage in enumerate(study.stages):
        where = f"{source}: stages[{i}]" if study.staged else source
        sraw = to_dict(stage)
        if smoke:
            sraw = _shrink(sraw, study.smoke)
        # the command line after the smoke cut: what a user sets (data.val_size, ...) is what runs
        sraw["base"] = deep_merge(sraw["base"], base_over)
        if new_seed:
            sraw["base"]["seed"] = seed
        if num_samples is not None:
            sraw["search"]["num_samples"] = num_samples
        if seeds:  # --seeds: every stage repeats its points per seed
            sraw["search"]["seeds"] = list(seeds)
        stages.append(_build_stage(sraw, where, study.staged, [s.name for s in stages]))
    return Plan(study, source, tuple(stages), res, seed)


def _shrink(sraw: dict, smoke: SmokeSpec) -> dict:
    """--smoke-test: the same path in seconds per trial on digits (3 epochs, small evaluation)."""
    s = copy.deepcopy(sraw)
    checkpoints = s.get("checkpoints")
    if checkpoints is not None and not all(isinstance(c, Mapping) and is_ref(c.get("checkpoint")) for c in checkpoints):
        return _shrink_evaluation(s, smoke)  # files name what they are: only the protocol's budgets are cut
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
    if checkpoints is not None:  # an evaluation stage of models the earlier (smoke) stages train
        return _shrink_evaluation(s, smoke)
    search = dict(s.get("search", {}))
    params = dict(search.get("params", {}))
    params.update({k: v for k, v in smoke.params.items() if k in params})  # a stage's own searched keys only
    search["params"] = params
    kept = [c for c in search.get("cases", []) if c.get("name") in smoke.cases]
    if smoke.cases and kept:  # a stage without any of the named cases keeps its own
        search["cases"] = kept
    grid = search.get("algorithm", "grid") == "grid"  # a grid's num_samples repeats it: smoke.num_samples is Optuna's
    search["num_samples"] = (None if grid else smoke.num_samples) or min(int(search.get("num_samples", 1)), 3)
    sched = dict(search.get("scheduler", {}))
    if sched.get("type") == "asha":
        sched["grace_period"] = 1
        search["scheduler"] = sched
    s["search"] = search
    if "model" not in smoke.base:  # every model became small_cnn: so do the references' conditions
        s = retarget_refs(s, "model", "small_cnn")
    return _shrink_evaluation(s, smoke)


def _shrink_evaluation(s: dict, smoke: SmokeSpec) -> dict:
    """--smoke-test's cut of a stage's certification: every attack of its protocol kept, budgets
    cut, small shards."""
    if "model" not in smoke.base and s.get("checkpoints"):
        s["checkpoints"] = retarget_refs(s["checkpoints"], "model", "small_cnn")
    ev = dict(s.get("evaluation", {}))
    from trainables.evaluation import get_protocol, smoke_overrides

    try:  # the study's own protocol, every attack kept, budgets cut (bad names fail in validation)
        protocol = get_protocol(ev.get("protocol", "quick"), ev.get("overrides") or {})
        ev["overrides"] = {**(ev.get("overrides") or {}), **smoke_overrides(protocol)}
    except ConfigError:
        pass
    s["evaluation"] = ev
    s["certify"] = {
        **s.get("certify", {}),
        "shard_size": min(int(s.get("certify", {}).get("shard_size", SMOKE_SHARD_SIZE)), SMOKE_SHARD_SIZE),
    }
    return s
