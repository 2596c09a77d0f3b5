"""``--dry-run``: what a study will run and what it will cost, before Ray starts or anything is
written. Every stage, every trial's full training config (the dict ``summary.json`` records for
a trial), the screening and certification protocols with their budgets, the certification plan
and an estimate of device-hours and wall time (``orchestrator.estimate``).

The trials come from the same functions the run uses (``grid_points``, ``default_point`` and
``trial_config`` from ``orchestrator.study``, then trainables' ``resolve``), so the dry run and
the run cannot disagree. Stage references to checkpoints an earlier stage will train are shown
as the references themselves; an Optuna stage's trials after its enqueued paper-default point are
chosen during the run, so the dry run shows their search ranges instead of values.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from trainables.schema import to_dict

from . import estimate
from .study import (
    default_point,
    entry_base,
    grid_points,
    is_ref,
    load_paper_settings,
    nested,
    parse_ref,
    sampler_label,
    searched_values,
    settings_findings,
    stage_refs,
    trial_config,
)


def _protocol(name: str, overrides: dict | None):
    from trainables.evaluation import get_protocol

    return get_protocol(name, overrides or {})


def _resolved(base: dict, point: dict, refs: dict[str, str]) -> dict[str, Any]:
    from trainables.config import resolve

    return to_dict(resolve(trial_config(base, point, refs)))


def _evaluated(stage, entry: dict, earlier: list[dict]) -> dict[str, Any]:
    """An evaluation stage's checkpoint as a trial of the plan: the config it is evaluated with
    (read from the file, or, for an earlier stage's checkpoint, the planned trial that trains it)."""
    import copy

    from trainables.config import resolve
    from trainables.loading import evaluation_config
    from trainables.schema import flatten

    base = entry_base(stage, entry)
    ck = entry["checkpoint"]
    if is_ref(ck):
        name, wanted = parse_ref(ck, "checkpoint")
        trained = [
            t["config"]
            for s in earlier
            if s["name"] == name
            for t in s["trials"]
            if all(str(flatten(t["config"]).get(k)) == v for k, v in wanted.items())
        ]
        config = copy.deepcopy(trained[0]) if trained else to_dict(resolve({**base, "init_checkpoint": None}))
    else:
        config = to_dict(evaluation_config(ck, base))
    return {"config": config, "searched": {"checkpoint": entry["name"]}, "evaluated": True}


def _val_images(cfg: dict) -> int:
    from trainables.data import val_count

    size = (cfg.get("data") or {}).get("val_size")
    return val_count(size, estimate.DATA[cfg["dataset"]]["train"]) if size else 0


def _precision(cfg: dict, gpu: bool) -> str:
    """What the training forwards run in: the loop's own rule (``fast.amp=auto`` decides per
    method on a GPU), for the study's devices."""
    import torch

    from trainables.config import resolve
    from trainables.loop import amp_dtype
    from trainables.methods import METHODS

    resolved = resolve(cfg)
    dtype = amp_dtype(resolved.fast, torch.device("cuda" if gpu else "cpu"), METHODS.get(resolved.method))
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def _ranges(stage) -> dict[str, Any]:
    out = {}
    for key, spec in stage.search.param_specs(stage.name).items():
        out[key] = list(spec.values) if spec.values else {"low": spec.low, "high": spec.high, "log": spec.log}
    return out


def stage_plan(stage, resources, gpu: bool, earlier: list[dict] | None = None) -> dict[str, Any]:
    """One stage as it will run: its trials (full configs), protocols and certification plan
    (``earlier``: the plans of the stages before it, whose checkpoints an evaluation stage names)."""
    refs = {r: r for r in stage_refs(stage)}  # checkpoints of earlier stages: named, not yet trained
    search = stage.search
    if stage.evaluates:
        trials = [_evaluated(stage, entry, earlier or []) for entry in stage.checkpoints]
        finalists = len(trials)  # every checkpoint of an evaluation stage is certified
    elif search.algorithm == "grid":
        points = grid_points(search)
        trials = [{"config": _resolved(stage.base, p, refs), "searched": searched_values(p)} for p in points]
        finalists = len(trials)  # every completed trial of a grid is certified
    else:
        first = default_point(search.param_specs(stage.name), stage.base) if search.enqueue_defaults else None
        ranges = _ranges(stage)
        trials = []
        for i in range(search.num_samples):
            if i == 0 and first:
                trials.append({"config": _resolved(stage.base, nested(first), refs), "searched": first})
            else:
                trials.append({"config": _resolved(stage.base, {}, refs), "searched": ranges, "chosen_by": "optuna"})
        finalists = min(len(trials), stage.certify.top_k + (1 if first else 0))
    screen = _protocol(stage.evaluation.screen, None)
    certify = _protocol(stage.evaluation.protocol, stage.evaluation.overrides)
    for t in trials:
        t["precision"] = "-" if stage.evaluates else _precision(t["config"], gpu)  # an evaluation trains nothing
        t["val_images"] = 0 if stage.evaluates else _val_images(t["config"])
    test = estimate.DATA[trials[0]["config"]["dataset"]]["test"] if trials else 0
    images = test if certify.n is None else min(certify.n, test)
    return {
        "name": stage.name,
        "search": "evaluation of checkpoints (nothing trained)" if stage.evaluates else sampler_label(search),
        "trials": trials,
        "screen": {"protocol": screen.name, "budgets": screen.budgets()},
        "certify": {
            "protocol": certify.name,
            "budgets": certify.budgets(),
            "finalists": finalists,
            "test_images": images,
            "shard_size": stage.certify.shard_size,
            "shards": finalists * math.ceil(images / stage.certify.shard_size) if images else 0,
        },
        "resources": to_dict(resources),
        "_protocols": (screen, certify),
    }


def concurrency(plan, shape) -> tuple[int, str]:
    """Trials at once: the study's cap, else what the cluster can grow to, else this machine."""
    from . import cluster

    res = plan.resources
    need = cluster.plan_need(res)
    if shape is not None:
        return cluster.concurrency(shape, need, res.max_concurrent_trials, []), "the cluster config"
    if res.max_concurrent_trials:
        return res.max_concurrent_trials, "resources.max_concurrent_trials"
    if res.gpus_per_worker > 0:
        return 1, "one trial at a time (give --cluster-config or --max-concurrent-trials for a cluster)"
    cpus = os.cpu_count() or 1
    return max(1, int(cpus // (res.cpus_per_worker * res.num_workers))), f"this machine's {cpus} CPUs"


def dry_run(plan, shape=None, basis: estimate.Basis | None = None) -> dict[str, Any]:
    """The whole plan as one JSON-able object: study, stages (with every trial's config) and the
    estimate (from ``basis``, default: the measurements in bench/results)."""
    gpu = plan.resources.gpus_per_worker > 0
    stages: list[dict] = []
    for s in plan.stages:
        stages.append(stage_plan(s, plan.resources, gpu, stages))
    basis = basis or estimate.load_basis(gpu)
    costed = []
    for s in stages:
        screen, certify = s.pop("_protocols")
        costs = []
        finalists_left = s["certify"]["finalists"]
        for t in s["trials"]:
            c = estimate.trial_cost(
                t["config"], screen, certify, finalists_left > 0, basis, t["val_images"], trains=not t.get("evaluated")
            )
            finalists_left -= 1
            t["estimate_hours"] = {
                "train": round(c.train_s / 3600, 4),
                "screen": round(c.screen_s / 3600, 4),
                "certify": round(c.certify_s / 3600, 4),
            }
            costs.append(c)
        costed.append({"name": s["name"], "costs": costs})
    settings = settings_report(plan, stages)
    at_once, why = concurrency(plan, shape)
    est = estimate.study_estimate(costed, basis, at_once, plan.resources.num_workers)
    est["concurrency_from"] = why
    return {
        "study": plan.study.name,
        "description": plan.study.description,
        "source": plan.source,
        "seed": plan.seed,
        "stages": stages,
        **({"settings": settings} if settings else {}),
        "deviations": [to_dict(d) for d in plan.study.deviations],
        "estimate": est,
    }


def settings_report(plan, stages: list[dict]) -> dict[str, Any] | None:
    """The paper's settings file of the study, and where the planned trials differ from it."""
    settings = load_paper_settings(plan.study.settings)
    if not settings:
        return None
    trials = [
        {
            "stage": s["name"],
            "label": f"{s['name']} #{i}",
            "config": t["config"],
            "searched_flat": {k: v for k, v in t["searched"].items() if not isinstance(v, (dict, list))},
            "precision": t["precision"],
            "certify_budgets": s["certify"]["budgets"],
            "evaluated": bool(t.get("evaluated")),
        }
        for s in stages
        for i, t in enumerate(s["trials"], 1)
    ]
    return {
        "file": plan.study.settings,
        "source": settings["source"],
        "cells": len(settings["cells"]),
        "findings": settings_findings(settings, trials, plan.study.deviations),
    }


def _short_model(cfg: dict) -> str:
    args = cfg.get("model_args") or {}
    shown = {k: v for k, v in args.items() if k in ("depth", "width")}
    return cfg["model"] + (f"({','.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")


def _start(cfg: dict) -> str:
    ck = cfg.get("init_checkpoint")
    return "random" if not ck else (ck if ck.startswith("stage:") else os.path.basename(ck))


def _budgets(budgets: dict) -> str:
    shared = ("n", "batch_size", "eps", "step_frac", "checks")
    parts = [f"n={budgets['n'] if budgets['n'] is not None else 'all'}", f"step eps*{budgets['step_frac']:g}"]
    for name, b in budgets.items():
        if name in shared:
            continue
        fields = ", ".join(f"{k}={json.dumps(v)}" for k, v in b.items()) if isinstance(b, dict) else ""
        parts.append(f"{name}({fields})" if fields else name)
    return "; ".join(parts)


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h >= 1 else f"{h * 60:.1f} min"


def _searched(t: dict) -> str:
    from .study import short_name

    parts = []
    for k, v in (t.get("searched") or {}).items():
        if isinstance(v, dict):  # a range Optuna samples in
            parts.append(f"{short_name(k)} in [{v['low']:g}, {v['high']:g}]{' log' if v['log'] else ''}")
        elif isinstance(v, list):
            parts.append(f"{short_name(k)} in {json.dumps(v)}")
        else:
            parts.append(f"{short_name(k)}={json.dumps(v)}")
    return ("chosen by Optuna: " if t.get("chosen_by") else "") + ", ".join(parts)


def _trial_lines(trials: list[dict]) -> list[str]:
    """One line per trial; consecutive trials that only Optuna tells apart share one line."""
    rows = []
    for i, t in enumerate(trials, 1):
        c = t["config"]
        variant = (c.get("method_args") or {}).get("variant")
        cells = [
            c["method"] + (f" ({variant})" if variant else ""),
            _short_model(c),
            c["dataset"],
            str(c["epochs"]),
            f"{c['optim']['lr']:g}",
            f"{c['eps']:.4g}",
            _start(c),
            t["precision"],
            _searched(t),
        ]
        if rows and t.get("chosen_by") and rows[-1][1] == cells and rows[-1][2]:
            rows[-1][0][1] = i
        else:
            rows.append([[i, i], cells, bool(t.get("chosen_by"))])
    head = ["method", "model", "dataset", "epochs", "lr", "eps", "start", "precision", "searched"]
    labels = [f"{a}" if a == b else f"{a}-{b}" for (a, b), _, _ in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *(cells for _, cells, _ in rows))]
    lw = max(len("#"), *(len(x) for x in labels))
    fmt = lambda label, cells: "  ".join([label.rjust(lw), *(x.ljust(w) for x, w in zip(cells, widths))]).rstrip()  # noqa: E731
    return ["  " + fmt("#", head)] + ["  " + fmt(label, cells) for label, (_, cells, _) in zip(labels, rows)]


def render(report: dict[str, Any]) -> str:
    """The plan as a person reads it, line by line against the paper."""
    lines = [f"study {report['study']}: {report['description']}", f"  file: {report['source']}  seed: {report['seed']}"]
    for s in report["stages"]:
        res = s["resources"]
        lines += [
            "",
            f"stage {s['name']}: {len(s['trials'])} trial(s), {s['search']}; "
            f"{res['num_workers']} worker(s) x {res['gpus_per_worker']:g} GPU / {res['cpus_per_worker']:g} CPU each",
            *_trial_lines(s["trials"]),
        ]
        val = {t["val_images"] for t in s["trials"]}
        sc, ce = s["screen"], s["certify"]
        lines.append(
            f"  screening on validation ({'/'.join(map(str, sorted(val)))} images): "
            + (f"{sc['protocol']}: {_budgets(sc['budgets'])}" if any(val) else "none (no validation split)")
        )
        upto = "up to " if "Optuna" in s["search"] else ""
        lines.append(
            f"  certification on test: {upto}{ce['finalists']} finalist(s) x {ce['test_images']} images in shards of "
            f"{ce['shard_size']} ({upto}{ce['shards']} shard tasks); protocol {ce['protocol']}: {_budgets(ce['budgets'])}"
        )
    lines += _settings_lines(report)
    e = report["estimate"]
    dev = e["device"].lower()
    lines += [
        "",
        f"estimate: {_hours(e[f'total_{dev}_hours'])} of {e['device']} time (training and screening "
        f"{_hours(e[f'training_and_screening_{dev}_hours'])}, certification {_hours(e[f'certification_{dev}_hours'])}); "
        f"wall time about {_hours(e['wall_hours'])} with {e['concurrency']} trial(s) at once ({e['concurrency_from']})",
    ]
    lines += [f"  {k}: {v}" for k, v in e["sources"].items()]
    lines.append(f"  {e['note']}")
    return "\n".join(lines)


def _settings_lines(report: dict[str, Any]) -> list[str]:
    """Where the plan differs from the paper's setting: declared (with the study's reason) or not."""
    st = report.get("settings")
    if not st:
        return ["", "paper settings: none named (settings: in the study file)"]
    groups: dict[tuple, list[dict]] = {}
    for f in st["findings"]:
        groups.setdefault(
            (f["key"], json.dumps(f["paper"]), json.dumps(f["study"]), f["deviation"], f.get("stale")), []
        ).append(f)
    lines = ["", f"paper settings ({st['file']}: {st['source']}): {st['cells']} cells checked against every trial"]
    if not groups:
        lines.append("  every trial runs the paper's setting")
    for (key, paper, study, reason, stale), found in groups.items():
        if stale:
            lines.append(f"  STALE deviation {key}: no trial differs from the paper there ({reason})")
        elif reason:
            lines.append(
                f"  differs on purpose, {key}: paper {paper}, study {study} in {len(found)} trial(s): {reason}"
            )
        else:
            lines.append(f"  DIFFERS, NOT DECLARED, {key}: paper {paper}, study {study} in {len(found)} trial(s)")
    return lines
