"""summary.json, summary.csv and the console table."""
from __future__ import annotations

import csv
import math
import re
import textwrap
from pathlib import Path
from typing import Any

from trainables.cli import one_line, write_json
from trainables.intervals import count_of, finite as _finite, intervals, wilson

KEY_METRICS = ("clean_acc", "robust_acc", "pgd20_acc", "autoattack_acc", "epoch_time_s", "images_per_s")
PLACEMENT = ("device", "node_id")  # where a trial ran: reported with its results, not a metric
_INTERNAL = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
             "iterations_since_restore", "training_iteration", "date", "done", "config", "trial_id",
             "checkpoint_dir_name", "should_checkpoint", "experiment_tag"}


def trial_row(*, study: str, stage: str, trial_id: str, config: dict, searched: dict, metrics: dict,
              status: str, mlflow_run_id: str | None, checkpoint: str | None, error: str | None = None,
              evaluation: dict | None = None) -> dict:
    """One trial of summary.json. Where it ran (``device``, ``node_id``) is kept apart from its
    metrics, which depend only on the config and seed."""
    placement = {k: metrics[k] for k in PLACEMENT if k in metrics}
    return {"trial_id": trial_id, "stage": stage, "study": study, "config": config, "searched": searched,
            "evaluation": evaluation or {}, "placement": placement,
            "metrics": {k: v for k, v in metrics.items() if k not in _INTERNAL and k not in PLACEMENT}, "status": status,
            "mlflow_run_id": mlflow_run_id, "checkpoint": checkpoint, **({"error": error} if error else {})}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def error_cause(err: BaseException | str | None, limit: int = 300) -> str | None:
    """A failed trial's cause as a person reads it: the innermost exception's type and first
    line (through Tune's, Ray's and Ray Train's wrappers), without colour codes or banners."""
    if err is None:
        return None
    e, seen = err, set()
    while isinstance(e, BaseException) and id(e) not in seen:
        seen.add(id(e))
        inner = (getattr(e, "cause", None) or getattr(e, "controller_failure", None)
                 or next(iter((getattr(e, "worker_failures", None) or {}).values()), None) or e.__cause__)
        if not isinstance(inner, BaseException):
            break
        e = inner
    text = _ANSI.sub("", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(("Traceback", "File "))]
    if isinstance(e, BaseException):
        # a RayTaskError's text is a banner and a traceback; its last line is "Type: message"
        first = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), None)
        line = first or (f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__)
    else:
        line = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), lines[-1] if lines else "")
    return line[:limit]


def rows_from_records(records: list[dict], *, study: str, stage, refs: dict[str, str], tracker) -> list[dict]:
    """A stage's trial records (``orchestrator.ledger``) as summary rows, sorted by trial id. A
    trial's config is the resolved one its worker reported; a trial that failed before
    reporting keeps the config it was given."""
    import json

    from trainables.schema import flatten

    from .driver import trial_train_config
    from .search import sampler_label
    from .study import default_point

    defaults = None
    if stage.search.algorithm == "optuna" and stage.search.enqueue_defaults:
        defaults = {k.replace("/", "."): v for k, v in default_point(stage.search.param_specs(), stage.base).items()}
    rows = []
    for record in records:
        metrics = dict(record.get("metrics") or {})
        trial_id = record["trial_id"]
        given = dict(record.get("config") or {})
        case = given.get("case")
        searched = flatten({k: v for k, v in given.items() if k != "case"})
        if case:
            searched = {"case": case["name"], **searched}
        reported = metrics.pop("resolved_config", None)
        config = json.loads(reported) if reported else trial_train_config(stage.base, given, refs)
        status = record.get("status", "stopped")
        rows.append(trial_row(study=study, stage=stage.name, trial_id=trial_id, config=config, searched=searched,
                              metrics=metrics, status=status, mlflow_run_id=tracker.trial_run_id(f"{stage.name}/{trial_id}"),
                              checkpoint=record.get("checkpoint"), error=record.get("error"),
                              evaluation={"protocol": stage.evaluation.protocol,
                                          "overrides": dict(stage.evaluation.overrides or {})}))
        rows[-1]["paper_default"] = bool(defaults) and all(searched.get(k) == v for k, v in defaults.items())
        rows[-1]["search"] = sampler_label(stage.search)
        if record.get("resumes"):
            rows[-1]["resumed_from_trial"] = record["resumes"]
    rows.sort(key=lambda r: r["trial_id"])
    if stage.search.selects:
        mark_finalists(rows, stage.search.objectives, stage.search.modes)
    for r in rows:
        r["ci95"] = intervals(r["metrics"])
    return rows


FINALISTS = 3  # at most this many trials of a selecting stage are its finalists (plus the paper defaults)


def pareto(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (every objective to be maximised)."""
    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def mark_finalists(rows: list[dict], objectives: list[str], modes: list[str], k: int = FINALISTS) -> None:
    """Mark a selecting stage's finalists, chosen on its validation objectives only: the Pareto
    set of the completed trials (for a single objective: the best, and any trial tied with it),
    at most ``k`` of them by the last objective, plus the paper-default trial. Nothing read from
    the test split takes part in the choice."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    done = [r for r in rows if r["status"] == "completed" and all(_finite(r["metrics"].get(o)) for o in objectives)]
    points = [tuple(sg * r["metrics"][o] for sg, o in zip(sign, objectives)) for r in done]
    front = sorted(pareto(points), key=lambda i: (-points[i][-1], done[i]["trial_id"]))[:k]
    chosen = {done[i]["trial_id"] for i in front}
    for r in rows:
        r["finalist"] = r["trial_id"] in chosen or (bool(r.get("paper_default")) and r in done)
        r["selected_on"] = "validation"


def write_summary(output_dir: Path, study: str, rows: list[dict], extra: dict | None = None) -> tuple[Path, Path]:
    summary = {"study": study, **(extra or {}), "trials": rows}
    jpath = output_dir / "summary.json"
    write_json(jpath, summary)
    cpath = output_dir / "summary.csv"
    searched_keys = sorted({k for r in rows for k in r["searched"]})
    metric_keys = [k for k in KEY_METRICS if any(k in r["metrics"] for r in rows)]
    extra_metrics = sorted({k for r in rows for k, v in r["metrics"].items()
                            if k.endswith("_acc") and k not in metric_keys and isinstance(v, (int, float))})
    with open(cpath, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["study", "stage", "trial_id", "status", "method", "model", "dataset", *searched_keys,
                    *metric_keys, *extra_metrics, "masking_flags", "mlflow_run_id"])
        for r in rows:
            c, m = r["config"], r["metrics"]
            w.writerow([study, r["stage"], r["trial_id"], r["status"], c.get("method"), c.get("model"), c.get("dataset"),
                        *[r["searched"].get(k) for k in searched_keys], *[m.get(k) for k in metric_keys],
                        *[m.get(k) for k in extra_metrics], ";".join(m.get("masking_flags") or []), r["mlflow_run_id"]])
    return jpath, cpath


def _pm(m: dict, key: str) -> str:
    """An accuracy in % with its 95 % interval's half-width from its image count ("71.0±8.9")."""
    v, n = m.get(key), count_of(key, m)
    if not _finite(v) or not n:
        return _pct(v)
    lo, hi = wilson(v, n)
    return f"{100 * v:.1f}±{100 * (hi - lo) / 2:.0f}"


def _pct(v: Any) -> str:
    if v is None or not isinstance(v, (int, float)) or math.isnan(v):
        return "-"
    return f"{100 * v:.1f}"


# short names of searched keys, as a person reads them (MLflow params and tables)
SHORT_NAMES = {"method_args.lr_beta": "gamma_beta"}
TABLE_WIDTH = 120


def short_name(key: str) -> str:
    return SHORT_NAMES.get(key, key.split(".")[-1])


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def table(rows: list[dict]) -> str:
    """The results table printed at the end of a study: accuracies in %, sorted by the
    per-image worst case (a search's by its validation worst case, what it selected on; its
    finalists marked ^), the paper-default trial marked (*), at most TABLE_WIDTH characters
    (every column is in summary.csv), and a footer saying on how many images each attack ran."""
    searched = sorted({k for r in rows for k in r["searched"]})
    selected = any("val/robust_acc" in r["metrics"] for r in rows)
    head = ["trial", "stage", "method", *[short_name(k) for k in searched], "status",
            *(["val rob%"] if selected else []), "clean%", "pgd20%", "AA%", "robust%", "s/ep", "masking"]
    # a search's table is ordered by what it selected on (validation), never by the test split
    key = "val/robust_acc" if selected else "robust_acc"
    order = sorted(rows, key=lambda r: -(r["metrics"][key] if _finite(r["metrics"].get(key)) else -1.0))
    body = []
    for r in order:
        m = r["metrics"]
        flags = m.get("masking_flags")
        masking = "-" if flags is None else (f"{len(flags)} flag(s)" if flags else "ok")
        mark = ("^" if r.get("finalist") else "") + ("*" if r.get("paper_default") else "")
        body.append([mark + r["trial_id"], r["stage"], r["config"].get("method"),
                     *[_num(r["searched"].get(k)) for k in searched], r["status"],
                     *([_pm(m, "val/robust_acc")] if selected else []), _pct(m.get("clean_acc")),
                     _pct(m.get("pgd20_acc")), _pct(m.get("autoattack_acc")), _pm(m, "robust_acc"),
                     _num(m.get("epoch_time_s")), masking])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    keep = len(head)
    while sum(widths[:keep]) + 2 * (keep - 1) > TABLE_WIDTH and keep > 6:
        keep -= 1  # the right-most columns go first (summary.csv has them all)
    fmt = lambda cells: "  ".join(str(x).ljust(w) for x, w in zip(cells[:keep], widths[:keep])).rstrip()  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    n = {r["metrics"].get("n_eval") for r in rows if r["metrics"].get("n_eval")}
    aa = {r["metrics"].get("autoattack_n") for r in rows if r["metrics"].get("autoattack_n")}
    worst = {r["metrics"].get("robust_acc_min_n") for r in rows if r["metrics"].get("robust_acc_min_n")}
    foot = []
    if n:
        foot.append(f"clean and PGD on {'/'.join(map(str, sorted(n)))} test images")
    if aa:
        foot.append(f"AutoAttack on {'/'.join(map(str, sorted(aa)))}")
    if foot:
        lines.append("; ".join(foot) + ".")
    if worst:
        lines.append(f"robust%: correct clean and under every white-box attack, on {'/'.join(map(str, sorted(worst)))} "
                     "images (the number to trust), ± its 95 % interval (Wilson).")
    if selected:
        nval = {r["metrics"].get("val/robust_acc_min_n") for r in rows if r["metrics"].get("val/robust_acc_min_n")}
        lines.append(f"^ finalists: selected on validation ({'/'.join(map(str, sorted(nval)))} images; val rob%: the "
                     f"screening's worst case there); every other column is the test split's"
                     f"{' (' + '/'.join(map(str, sorted(n))) + ' images)' if n else ''}.")
    if any(r.get("paper_default") for r in rows):
        lines.append("* the paper's default hyperparameters. PGD alone is an upper bound on robustness.")
    else:
        lines.append("PGD alone is an upper bound on robustness.")
    # the footer wraps at the table's width; failure causes are cut to one line each
    lines = lines[:2 + len(body)] + [w for x in lines[2 + len(body):] for w in textwrap.wrap(x, TABLE_WIDTH)]
    for r in rows:
        if r.get("error"):
            lines.append(one_line(f"failed {r['trial_id']}: {r['error']}", TABLE_WIDTH))
    return "\n".join(lines)
