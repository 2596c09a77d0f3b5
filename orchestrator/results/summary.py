"""A stage's trials as summary rows, and summary.json / summary.csv.

A row holds a trial's config, its searched values, its metrics (training metrics bare, the
screening under ``val/``, the certification under ``test/``), where it ran, its status, whether
it is a finalist and on what it was selected, and every accuracy's 95 % interval (``ci95``)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.files import write_json

from ..record import TrialStatus, trial_key
from ..study import (
    PLACEMENT,
    TEST,
    TUNE_INTERNAL,
    default_point,
    intervals,
    paper_metrics,
    sampler_label,
    searched_values,
    seed_group,
    trial_config,
)

KEY_METRICS = (
    "val/robust_acc",
    "test/clean_acc",
    "test/robust_acc",
    "test/pgd20_acc",
    "test/autoattack_acc",
    "epoch_time_s",
    "images_per_s",
)


def trial_row(
    *,
    study: str,
    stage: str,
    trial_id: str,
    config: dict,
    searched: dict,
    metrics: dict,
    status: str,
    mlflow_run_id: str | None,
    checkpoint: str | None,
    error: str | None = None,
    evaluation: dict | None = None,
) -> dict:
    """One trial of summary.json. Where it ran (``device``, ``node_id``) is kept apart from its
    metrics, which depend only on the config and seed."""
    placement = {k: metrics[k] for k in PLACEMENT if k in metrics}
    return {
        "trial_id": trial_id,
        "stage": stage,
        "study": study,
        "config": config,
        "searched": searched,
        "evaluation": evaluation or {},
        "placement": placement,
        "metrics": {k: v for k, v in metrics.items() if k not in TUNE_INTERNAL and k not in PLACEMENT},
        "status": status,
        "mlflow_run_id": mlflow_run_id,
        "checkpoint": checkpoint,
        **({"error": error} if error else {}),
    }


def rows_from_records(
    records: list[dict], *, study: str, stage, refs: dict[str, str], run_id_of: Callable[[str], str | None]
) -> list[dict]:
    """A stage's trial records (``orchestrator.tuner.ledger``) as summary rows, sorted by trial
    id. A trial's config is the resolved one its worker reported; a trial that failed before
    reporting keeps the config it was given."""
    defaults = None
    if stage.search.algorithm == "optuna" and stage.search.enqueue_defaults:
        defaults = default_point(stage.search.param_specs(), stage.base)
    rows = []
    for record in records:
        metrics = dict(record.get("metrics") or {})
        given = dict(record.get("config") or {})
        searched = searched_values(given)
        reported = metrics.pop("resolved_config", None)
        row = trial_row(
            study=study,
            stage=stage.name,
            trial_id=record["trial_id"],
            config=json.loads(reported) if reported else trial_config(stage.base, given, refs),
            searched=searched,
            metrics=metrics,
            status=record.get("status", TrialStatus.STOPPED.value),
            mlflow_run_id=run_id_of(trial_key(stage.name, record["trial_id"])),
            checkpoint=record.get("checkpoint"),
            error=record.get("error"),
            evaluation={"protocol": stage.evaluation.protocol, "overrides": dict(stage.evaluation.overrides or {})},
        )
        row["paper_default"] = bool(defaults) and all(searched.get(k) == v for k, v in defaults.items())
        row["search"] = sampler_label(stage.search)
        if "seed" in searched:  # one point of several seeds
            row["seed_group"] = seed_group(searched)
        if record.get("resumes"):
            row["resumed_from_trial"] = record["resumes"]
        rows.append(row)
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def add_certification(row: dict[str, Any], certified: dict[str, Any]) -> None:
    """A finalist's test-split numbers (already under ``test/`` names) into its row."""
    row["metrics"].update(certified)
    row["certified"] = True


def seed_summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every point a stage repeated across seeds: its completed trials' mean and sample
    standard deviation of every number, beside the per-seed rows (each keeps its own interval)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("seed_group") and r["status"] == TrialStatus.COMPLETED:
            groups.setdefault((r["stage"], r["seed_group"]), []).append(r)
    out = []
    for (stage, group), members in groups.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: r["searched"]["seed"])
        keys = sorted(
            {
                k
                for r in members
                for k, v in r["metrics"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
        )
        mean, sd = {}, {}
        for k in keys:
            values = [r["metrics"][k] for r in members if isinstance(r["metrics"].get(k), (int, float))]
            if len(values) == len(members) and all(math.isfinite(v) for v in values):
                mean[k], sd[k] = statistics.fmean(values), statistics.stdev(values)
        point = {k: v for k, v in members[0]["searched"].items() if k != "seed"}
        out.append({"stage": stage, "seed_group": group, "point": point, "seeds": [r["searched"]["seed"] for r in members],
                    "trial_ids": [r["trial_id"] for r in members], "n": len(members), "mean": mean, "sd": sd})  # fmt: skip
    return out


def add_paper(rows: list[dict[str, Any]], paper: dict[str, Any]) -> None:
    """The paper's numbers for each row's trial (``paper``: our metric names and units), where
    the paper gives any (``orchestrator.study.paper``)."""
    for r in rows:
        numbers = paper_metrics(paper, r) if paper else {}
        if numbers:
            r["paper"] = numbers


def add_intervals(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        r["ci95"] = intervals(r["metrics"])


def write_summary(output_dir: Path, study: str, rows: list[dict], extra: dict | None = None) -> tuple[Path, Path]:
    """summary.json (every row, and the seed groups) and summary.csv (a row per trial, then each
    seed group's mean and sd rows)."""
    groups = seed_summaries(rows)
    summary = {"study": study, **(extra or {}), "trials": rows, **({"seed_groups": groups} if groups else {})}
    jpath = output_dir / "summary.json"
    write_json(jpath, summary)
    cpath = output_dir / "summary.csv"
    cols = _csv_columns(rows)
    with open(cpath, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "study",
                "stage",
                "trial_id",
                "status",
                "finalist",
                "method",
                "model",
                "dataset",
                *cols["searched"],
                *cols["metrics"],
                *[f"paper/{k}" for k in cols["paper"]],
                "val_masking_flags",
                "test_masking_flags",
                "mlflow_run_id",
            ]  # fmt: skip
        )
        for r in rows:
            w.writerow(_csv_trial(study, r, cols))
        for g in groups:  # beside the per-seed rows: the mean and the sample sd across the seeds
            first = next(r for r in rows if r["trial_id"] == g["trial_ids"][0])
            for what in ("mean", "sd"):
                w.writerow(_csv_seed_row(study, g, what, first["config"], cols))
    return jpath, cpath


def _csv_columns(rows: list[dict]) -> dict[str, list[str]]:
    metric_keys = [k for k in KEY_METRICS if any(k in r["metrics"] for r in rows)]
    extra = {
        k
        for r in rows
        for k, v in r["metrics"].items()
        if k.endswith("_acc") and k not in metric_keys and isinstance(v, (int, float))
    }
    return {
        "searched": sorted({k for r in rows for k in r["searched"]}),
        "metrics": metric_keys + sorted(extra),
        "paper": sorted({k for r in rows for k in r.get("paper", {})}),
    }


def _csv_trial(study: str, r: dict, cols: dict[str, list[str]]) -> list:
    c, m = r["config"], r["metrics"]
    return [
        study, r["stage"], r["trial_id"], r["status"], bool(r.get("finalist")), c.get("method"), c.get("model"),
        c.get("dataset"), *[r["searched"].get(k) for k in cols["searched"]], *[m.get(k) for k in cols["metrics"]],
        *[r.get("paper", {}).get(k) for k in cols["paper"]], ";".join(m.get("val/masking_flags") or []),
        ";".join(m.get(TEST + "masking_flags") or []), r["mlflow_run_id"],
    ]  # fmt: skip


def _csv_seed_row(study: str, g: dict, what: str, config: dict, cols: dict[str, list[str]]) -> list:
    return [
        study, g["stage"], f"{what}({','.join(g['trial_ids'])})", f"{what} over seeds {','.join(map(str, g['seeds']))}",
        "", config.get("method"), config.get("model"), config.get("dataset"),
        *[g["point"].get(k, "") if k != "seed" else "" for k in cols["searched"]],
        *[g[what].get(k) for k in cols["metrics"]], *["" for _ in cols["paper"]], "", "", "",
    ]  # fmt: skip
