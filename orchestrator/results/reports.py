"""Study reports: PNG plots and a markdown table written to the output directory (and logged
to the study's MLflow parent run by the sweep).

Where the paper publishes a number for the same cell, it stands in a column beside ours; the
paper's numbers live in ``orchestrator/study/paper_numbers/*.yaml`` with their table reference.
Every accuracy in a report's tables is the test split's (a finalist's certification) unless it is
named ``val``; the search plots show the validation numbers the search selected on.
Robustness columns always show AutoAttack beside PGD, and a trial whose gradient-masking
checks fired says so in its row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.evaluation import describe_flags
from trainables.published import FORMATS as PUBLISHED_FORMATS
from trainables.schema import to_dict

from ..record import TrialStatus
from ..study import TEST, VAL, load_paper_numbers, paper_cell, short_name
from ..study import finite as _finite
from .format import num, pct
from .tables import on_digits, table

REPORTS: dict[str, Callable[..., list[Path]]] = {}


def register(name: str):
    def deco(fn):
        REPORTS[name] = fn
        return fn

    return deco


def _pct(v: Any) -> str:
    """An accuracy in % with two decimals (reports); "-" when missing."""
    return pct(v, digits=2)


def test_view(row: dict) -> dict[str, Any]:
    """A row's test-split numbers (its certification) under their bare names; empty for a trial
    that was not certified."""
    return {k[len(TEST) :]: v for k, v in row["metrics"].items() if k.startswith(TEST)}


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    return num(v, fmt, nan="-")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _flags(m: dict) -> str:
    text = describe_flags(m.get("masking_flags"))
    return text.replace("FLAGGED", "**FLAGGED**")  # the same words as the console, bold in markdown


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


def _status_note(r: dict) -> str:
    return "" if r["status"] == TrialStatus.COMPLETED else f" ({r['status']})"


def write_report(study, rows: list[dict], output_dir: Path) -> list[Path]:
    """Write the report named by ``study.report`` plus the beta matrices; returns the files."""
    fn = REPORTS[study.report]  # validated with the study
    paper = load_paper_numbers(study.paper)
    for r in rows:  # rows from older summaries name no evaluation: the study file says which
        if not r.get("evaluation"):
            r["evaluation"] = stage_evaluation(study, r["stage"])
    sections, files = fn(rows, output_dir, paper)
    files += beta_plots(rows, output_dir)
    flagged = [r for r in rows if test_view(r).get("masking_flags")]
    text = [f"# {study.name}", "", study.description, ""]
    if paper.get("source"):
        text += [f"Paper numbers: {paper['source']} (columns marked *paper*).", ""]
        if on_digits(rows):
            text += ["These trials ran on the 8x8 digits (a `--smoke-test`): not the paper's setting, so the "
                     "*paper* columns compare nothing.", ""]  # fmt: skip
    text += _setting_lines(study)
    text += _seed_section(rows)
    searches = sorted({f"{r['stage']}: {r['search']}" for r in rows if r.get("search")})
    if searches:
        text += ["Search: " + "; ".join(searches) + ".", ""]
    selected = [r for r in rows if r.get("selected_on") == "validation"]
    if selected:
        nval = sorted({r["metrics"]["val/n_eval"] for r in selected if r["metrics"].get("val/n_eval")})
        ntest = sorted({test_view(r)["n_eval"] for r in selected if test_view(r).get("n_eval")})
        finalists = [r["trial_id"] for r in selected if r.get("finalist")]
        text += [
            f"Selected on validation ({'/'.join(map(str, nval))} images held out of the training split; the "
            f"search saw only those numbers), certified on test ({'/'.join(map(str, ntest))} images). "
            f"Finalists (^): {', '.join(finalists) or 'none'}. Every accuracy below is the test split's unless "
            "named `val`; `summary.json` has each one's 95 % interval (`ci95`).",
            "",
        ]
    precisions = sorted({str(r["metrics"]["precision"]) for r in rows if r["metrics"].get("precision")})
    if precisions:
        text += [
            f"Training forwards ran in {' and '.join(precisions)} (attacks always in fp32; `precision` in "
            "each trial's metrics and MLflow params).",
            "",
        ]
    text += [
        "Accuracies in %. `robust min` counts an image only if it is correct clean and under every white-box attack of the protocol "
        "(AutoAttack included); PGD alone is an upper bound on robustness.",
        "",
    ]
    if flagged:
        text += [
            f"**{len(flagged)} trial(s) have gradient-masking flags**: their PGD numbers are not trustworthy "
            "(see the `masking` column and each finalist's certification.json).",
            "",
        ]
    text += sections
    text += _paired_section(rows)
    text += _utilisation_section(rows)
    text += beta_section(rows)
    text += ["", "## All trials", "", "```", table(rows), "```", ""]
    path = output_dir / "report.md"
    path.write_text("\n".join(text))
    return [path, *files]


def _utilisation_section(rows: list[dict]) -> list[str]:
    """Each trial's mean use of its devices over its epochs and workers (``system/worker_R/*`` on
    its MLflow run has them per worker and epoch)."""
    used = [r for r in rows if "mean_cpu_percent" in r["metrics"]]
    if not used:
        return []
    gpu = any("mean_gpu_util" in r["metrics"] for r in used)
    body = [
        [r["stage"], r["trial_id"], str(r.get("placement", {}).get("device", "-")), _num(r["metrics"]["mean_cpu_percent"], "{:.0f}"),
         *([_num(r["metrics"].get("mean_gpu_util"), "{:.0f}")] if gpu else []),
         _num(100 * r["metrics"].get("mean_loader_wait_share", float("nan")), "{:.1f}")]
        for r in used
    ]  # fmt: skip
    head = ["stage", "trial", "device", "CPU % (process)", *(["GPU util %"] if gpu else []), "waiting for data %"]
    return ["## Device utilisation", "", "Means over each trial's epochs and workers (CPU % of its process, "
            "100 per busy core; GPU utilisation from NVML); per worker and epoch on its MLflow run as system metrics.",
            "", _md_table(head, body), ""]  # fmt: skip


def _paired_section(rows: list[dict]) -> list[str]:
    """McNemar's exact test of each certified trial against the paper defaults, and of the best
    against the runner-up, on the same test images."""
    from .paired import ALPHA, paired_tests

    tests = paired_tests(rows)
    if not tests:
        return []
    body = [
        [t["stage"], t["a"], f"{t['against']} ({t['b']})", f"{100 * t['difference']:+.1f}", str(t["a_only"]),
         str(t["b_only"]), f"{t['p_value']:.3g}", str(t["n"])]
        for t in tests
    ]  # fmt: skip
    return [
        "## Paired tests",
        "",
        "McNemar's exact test on the per-image worst case over the same test images: only the images one "
        f"model gets right and the other wrong count. p < {ALPHA} is called distinguishable; with several "
        "tests, no correction for multiple comparisons is applied.",
        "",
        _md_table(["stage", "trial", "against", "points", "only trial right", "only other right", "p", "images"], body),
        "",
    ]


@register("generic")
def generic(rows, out, paper):
    return [], []


# ----------------------------------------------------------------------------- sensitivity
CONTOUR_MIN_TRIALS = 15  # below this a contour over 2 of 4 parameters interpolates more than it shows
IMPORTANCE_MIN_TRIALS = 20  # below this fANOVA importances are said to be unreliable


class _Figures:
    """The report's figures, saved beside it and linked from its text."""

    def __init__(self, out: Path, text: list[str]):
        self.out, self.text, self.files = out, text, []

    def save(self, ax, name: str, title: str) -> None:
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        p = _savefig(fig, self.out / f"sensitivity_{name}.png", tight=False)  # Optuna lays its figures out
        self.files.append(p)
        self.text.extend([f"## {title}", "", f"![{name}]({p.name})", ""])


@register("sensitivity")
def sensitivity(rows, out, paper):
    """Optuna's own plots of the search (Pareto front, slices, parallel coordinates, a contour
    when there are enough trials, importances with a caveat), the paper-default trial marked.
    Only the searched stage's trials are plotted (a first stage that trains a starting model is no point of the search)."""
    rows = [r for r in rows if str(r.get("search", "")).startswith("Optuna")] or rows
    keys = _plotted([r for r in rows if r["status"] == TrialStatus.COMPLETED])
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED and all(_finite(r["metrics"].get(k)) for k in keys)]
    if not done:
        return ["no completed trial to plot"], []
    import warnings

    import optuna

    split = "validation " if keys[0].startswith(VAL) else ""
    text = [
        f"{len(done)} completed trial(s); ★ marks the paper's defaults (alpha 0.01, Mixup a 0.2, Delta 0.1, "
        "gamma_beta 0.01). Robust accuracy is the per-image worst case over the white-box attacks"
        + (" (the plots show the validation numbers the search selected on: the screening's)" if split else "")
        + ".",
        "",
    ]
    figures = _Figures(out, text)
    study, default = search_study(done)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        _search_plots(figures, study, default, split)
        _interpolated_plots(figures, study, done, split)
    _plt().close("all")
    params = list(study.trials[0].params)
    text += [
        "",
        "## Trials",
        "",
        "Ordered by the number the plots show (the validation worst case the search selected "
        "on); ^ marks the finalists, whose test numbers are their certification.",
        "",
        _md_table(
            ["trial", *params, "val clean", "val robust min", "test clean", "test robust min"],
            [
                [
                    ("^ " if r.get("finalist") else "") + ("★ " if r.get("paper_default") else "") + r["trial_id"],
                    *[_num(_short_searched(r).get(k)) for k in params],
                    _pct(r["metrics"].get(VAL + "clean_acc")),
                    _pct(r["metrics"].get(VAL + "robust_acc")),
                    _pct(test_view(r).get("clean_acc")),
                    _pct(test_view(r).get("robust_acc")),
                ]
                for r in sorted(done, key=lambda r: (-r["metrics"][keys[1]], r["trial_id"]))
            ],
        ),
    ]
    return text, figures.files


def _search_plots(figures: _Figures, study, default, split: str) -> None:
    """What every trial shows as it is: the Pareto front, a slice per parameter, parallel coordinates."""
    import optuna.visualization.matplotlib as ovm

    robust = lambda t: t.values[1]  # noqa: E731
    ax = ovm.plot_pareto_front(study, target_names=[f"{split}clean accuracy", f"{split}robust accuracy"])
    if default is not None:
        ax.scatter(*default.values, marker="*", s=260, c="gold", edgecolors="k", zorder=5, label="paper defaults")
        ax.legend(loc="best", fontsize=8)
    figures.save(ax, "pareto", f"Pareto front ({split}clean vs {split}robust)")
    ax = ovm.plot_slice(study, target=robust, target_name=f"{split}robust accuracy")
    if default is not None:
        for a, k in zip(list(ax.flat) if hasattr(ax, "flat") else [ax], list(study.trials[0].params)):
            a.scatter([default.params[k]], [default.values[1]], marker="*", s=200, c="gold", edgecolors="k", zorder=5)
    figures.save(
        ax, "slice", f"{'Validation r' if split else 'R'}obust accuracy against each parameter (one point per trial)"
    )
    ax = ovm.plot_parallel_coordinate(study, target=robust, target_name=f"{split}robust accuracy")
    figures.save(ax, "parallel", "Parallel coordinates")


def _interpolated_plots(figures: _Figures, study, done: list[dict], split: str) -> None:
    """What needs enough trials to mean something: a contour over (alpha, a), importances."""
    import optuna.visualization.matplotlib as ovm

    robust = lambda t: t.values[1]  # noqa: E731
    params, text = list(study.trials[0].params), figures.text
    if len(done) >= CONTOUR_MIN_TRIALS and {"alpha", "mixup_a"} <= set(params):
        ax = ovm.plot_contour(study, params=["alpha", "mixup_a"], target=robust, target_name=f"{split}robust accuracy")
        figures.save(ax, "contour", "Robust accuracy over (alpha, Mixup a), interpolated")
    else:
        text += [
            f"No contour: {len(done)} trial(s) (a contour needs at least {CONTOUR_MIN_TRIALS}; the slices "
            "above show every trial as it is).",
            "",
        ]
    imp = importances(done)
    if not imp:
        text.append("Not enough completed trials with varied parameters to estimate importances.")
        return
    ax = ovm.plot_param_importances(study, target=robust, target_name=f"{split}robust accuracy", evaluator=fanova())
    figures.save(ax, "importance", "Parameter importances (Optuna, fANOVA on robust accuracy)")
    text.append(_md_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in imp.items()]))
    if len(done) < IMPORTANCE_MIN_TRIALS:
        text += [
            "",
            f"Caveat: {len(done)} trials; importances estimated from fewer than "
            f"{IMPORTANCE_MIN_TRIALS} trials are unreliable (they rank what varied, not what matters).",
        ]


def _short_searched(r: dict) -> dict[str, Any]:
    return {
        short_name(k): v for k, v in r["searched"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _plotted(done: list[dict]) -> list[str]:
    """The two numbers the search plots show: what the search selected on (validation) when
    every trial has them, so that Optuna's "best trials" are the search's own; else the test's."""
    val = [VAL + "clean_acc", VAL + "robust_acc"]
    return (
        val
        if all(_finite(r["metrics"].get(k)) for r in done for k in val)
        else [TEST + "clean_acc", TEST + "robust_acc"]
    )


def search_study(done: list[dict]):
    """The completed trials as an in-memory two-objective Optuna study (clean, robust; on
    validation when the search selected there), for Optuna's plots; and the paper-default
    trial among them (or None)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keys = sorted({k for r in done for k in _short_searched(r)})
    dists = {}
    for k in keys:
        vals = [float(_short_searched(r)[k]) for r in done if k in _short_searched(r)]
        lo, hi = min(vals), max(vals)
        log = lo > 0 and hi / lo >= 10  # the searched ranges of alpha, a and gamma_beta are log-scale
        dists[k] = optuna.distributions.FloatDistribution(lo, hi if hi > lo else lo + 1e-9, log=log)
    study = optuna.create_study(directions=["maximize", "maximize"])
    default = None
    for r in done:
        sv = _short_searched(r)
        if any(k not in sv for k in keys):
            continue
        t = optuna.trial.create_trial(
            params={k: float(sv[k]) for k in keys},
            distributions=dists,
            values=[r["metrics"][k] for k in _plotted(done)],
        )
        study.add_trial(t)
        if r.get("paper_default"):
            default = t
    return study, default


def fanova():
    """fANOVA, seeded (Optuna 5's default, PED-ANOVA, ranks what makes a target low)."""
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=0)


def importances(done: list[dict]) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) for robust accuracy over the completed trials."""
    import optuna

    study, _ = search_study(done)
    if len(study.trials) < 3 or not study.trials[0].params:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study, target=lambda t: t.values[1], evaluator=fanova()))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


# ----------------------------------------------------------------------------- width
def _arm(r: dict) -> str:
    """What a row is in a comparison: its grid case's name (two SPROUT variants are two arms), else
    its method; published weights say so, with their format."""
    name = r["searched"].get("case") or (r["trial_id"] if r.get("evaluated") else r["config"]["method"])
    ck = str(r["config"].get("init_checkpoint") or "")
    fmt = ck.split(":", 1)[0] if r.get("evaluated") and ":" in ck and not ck.startswith("/") else None
    return f"{name} (published, {fmt})" if fmt in PUBLISHED_FORMATS else name


def _width_lines(axes, method: str, pts: list[tuple]) -> None:
    """One line per arm through the mean at each width; with several seeds, their sample sd as error bars."""
    import statistics

    widths = sorted({w for w, _ in pts})

    def series(key):
        values = [[m.get(key, math.nan) for w2, m in pts if w2 == w] for w in widths]
        mean = [statistics.fmean(v) for v in values]
        sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        return mean, sd

    mean, sd = series("pgd20_acc")
    axes[0].errorbar(widths, mean, yerr=sd, fmt="o-", capsize=3, label=f"{method} PGD-20")
    if any("autoattack_acc" in m for _, m in pts):
        mean, sd = series("autoattack_acc")
        axes[0].errorbar(widths, mean, yerr=sd, fmt="s--", capsize=3, label=f"{method} AutoAttack")
    mean, sd = series("clean_acc")
    axes[1].errorbar(widths, mean, yerr=sd, fmt="o-", capsize=3, label=method)


@register("width")
def width(rows, out, paper):
    plt = _plt()
    by: dict[str, list[tuple]] = {}
    for r in rows:
        if r["status"] != TrialStatus.COMPLETED:
            continue
        w = r["config"].get("model_args", {}).get("width")
        by.setdefault(_arm(r), []).append((w, test_view(r)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    table = []
    for method, pts in sorted(by.items()):
        pts.sort(key=lambda t: (t[0], t[1].get("seed", 0)))
        _width_lines(axes, method, pts)
        for w, m in pts:
            table.append(
                [
                    method,
                    w,
                    _pct(m.get("clean_acc")),
                    _pct(m.get("pgd20_acc")),
                    _pct(m.get("autoattack_acc")),
                    _pct(m.get("robust_acc")),
                    _flags(m),
                ]
            )
    for ax, title in zip(axes, ("robust accuracy", "clean accuracy")):
        ax.set_xlabel("WRN width k")
        ax.set_ylabel(title)
        ax.legend(fontsize=8)
    p = _savefig(fig, out / "width.png")
    note = [c for c in paper.get("cells", [])]
    text = [
        "## Accuracy against width",
        "",
        f"![width]({p.name})",
        "",
        _md_table(["method", "width", "clean", "PGD-20", "AutoAttack", "robust min", "masking"], table),
    ]
    if note:
        text += [
            "",
            "Paper (Figure 3, no table): both methods below 47 % PGD-20 accuracy at width 1; "
            "SPROUT ahead of PGD-AT by roughly 15 points at larger widths.",
        ]
    return text, [p]


# ----------------------------------------------------------------------------- scalability
@register("scalability")
def scalability(rows, out, paper):
    """Seconds per epoch and the ratio to natural training on the same model at the same
    precision, beside Table 6 (fp32 on a GTX 1080)."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED]
    seconds = lambda r: r["metrics"].get("mean_epoch_time_s") or r["metrics"].get("epoch_time_s")  # noqa: E731
    column = lambda r: (r["config"]["model"], r["metrics"].get("precision") or "fp32")  # noqa: E731
    nat = {column(r): seconds(r) for r in done if r["config"]["method"] == "natural"}
    paper_nat = {c["model"]: c["seconds_10_epochs"] for c in paper.get("cells", []) if c["method"] == "natural"}
    table, bars = [], {}
    for r in sorted(done, key=lambda r: (*column(r), _arm(r))):
        (model, precision), t = column(r), seconds(r)
        ratio = t / nat[column(r)] if nat.get(column(r)) else None
        cell = paper_cell(paper, r) if _arm(r) != "sprout-paper" else {}  # Table 6 times one SPROUT
        pratio = cell["seconds_10_epochs"] / paper_nat[model] if cell and model in paper_nat else None
        table.append(
            [
                model,
                precision,
                _arm(r),
                _num(t, "{:.3f}"),
                _num(r["metrics"].get("images_per_s"), "{:.0f}"),
                _num(ratio, "{:.2f}x"),
                _num(cell.get("seconds_10_epochs") if cell else None, "{:.1f}"),
                _num(pratio, "{:.2f}x"),
            ]
        )
        if ratio is not None:
            bars.setdefault(column(r), []).append((_arm(r), ratio, pratio))
    files = _ratio_bars(bars, out)
    text = [
        "## Training cost per epoch",
        "",
        "Mean seconds per epoch after the first (start-up excluded); ratios to natural training on the same "
        "model at the same precision, measured in the same study. Table 6 times every method in fp32.",
        "",
        _md_table(
            [
                "model",
                "precision",
                "method",
                "s/epoch",
                "images/s",
                "ratio to natural",
                "paper s/10 epochs",
                "paper ratio",
            ],
            table,
        ),
    ]
    if files:
        text += ["", f"![scalability]({files[0].name})"]
    return text, files


def _ratio_bars(bars: dict, out: Path) -> list[Path]:
    if not bars:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, len(bars), figsize=(6 * len(bars), 4), squeeze=False)
    for ax, ((model, precision), items) in zip(axes[0], sorted(bars.items())):
        xs = range(len(items))
        ax.bar([x - 0.2 for x in xs], [i[1] for i in items], width=0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], [i[2] if i[2] else 0 for i in items], width=0.4, label="paper (Table 6, fp32)")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([i[0] for i in items], rotation=30, ha="right")
        ax.set_ylabel("time per epoch / natural")
        ax.set_title(f"{model}, {precision}")
        ax.legend()
    return [_savefig(fig, out / "scalability.png")]


def _arm_bars(rows: list[dict], paper: dict, out: Path, name: str, table: str) -> list[Path]:
    """Each arm's PGD-20 and worst-case accuracy on test beside the paper's PGD-20, as bars."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED and test_view(r).get("pgd20_acc") is not None]
    if not done:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(done)), 4))
    xs = range(len(done))
    ours = [100 * test_view(r)["pgd20_acc"] for r in done]
    worst = [100 * (test_view(r).get("robust_acc") or 0) for r in done]
    theirs = [paper_cell(paper, r).get("pgd20_acc") for r in done]
    ax.bar([x - 0.27 for x in xs], ours, width=0.27, label="PGD-20 (ours)")
    ax.bar(list(xs), worst, width=0.27, label="worst case incl. AutoAttack (ours)")
    ax.bar([x + 0.27 for x in xs], [t or 0 for t in theirs], width=0.27, label=f"PGD-20 (paper, {table})")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([_arm(r) for r in done], rotation=30, ha="right")
    ax.set_ylabel("test accuracy under attack, %")
    ax.legend(fontsize=8)
    return [_savefig(fig, out / name)]


# ----------------------------------------------------------------------------- tables
def _robust_table(
    rows, paper, key_cols: list[tuple[str, str]], label: Callable[[dict], list[str]], label_head: list[str]
):
    head = [*label_head]
    for title, key in key_cols:
        head.append(title)
        if any(key in c for c in paper.get("cells", [])):
            head.append(f"{title} *paper*")
    head += ["masking"]
    body = []
    for r in rows:
        m = test_view(r)
        cell = paper_cell(paper, r)
        line = label(r)
        line[-1] += _status_note(r)
        for _title, key in key_cols:
            v = _pct(m.get(key))
            if key == "autoattack_acc" and m.get("autoattack_n") and m.get("autoattack_n") != m.get("n_eval"):
                v += f" (n={m['autoattack_n']})"  # AutoAttack may run on a subset of the PGD images
            line.append(v)
            if any(key in c for c in paper.get("cells", [])):
                line.append(_num(cell.get(key), "{:.2f}") if cell else "-")
        line.append(_flags(m))
        body.append(line)
    return _md_table(head, body)


def _seed_section(rows: list[dict]) -> list[str]:
    """The points repeated across seeds: mean and sample standard deviation of the test numbers."""
    from .summary import seed_summaries

    groups = seed_summaries(rows)
    if not groups:
        return []
    body = []
    for g in groups:
        cells = [
            f"{100 * g['mean'][TEST + k]:.2f} ± {100 * g['sd'][TEST + k]:.2f}" if TEST + k in g["mean"] else "-"
            for k in ("clean_acc", "pgd20_acc", "autoattack_acc", "robust_acc")
        ]
        point = ", ".join(f"{short_name(k)}={v}" for k, v in g["point"].items())
        body.append([g["stage"], point, ",".join(map(str, g["seeds"])), *cells])
    head = ["stage", "point", "seeds", "clean", "PGD-20", "AutoAttack", "robust min"]
    return [
        "## Across seeds",
        "",
        "Each point repeated with every seed: the mean ± the sample standard deviation of its test numbers "
        "(each seed's own row, with its 95 % interval, is in the tables below and in `summary.json`).",
        "",
        _md_table(head, body),
        "",
    ]


def _setting_lines(study) -> list[str]:
    """Which paper setting the study runs, and where it differs on purpose (its deviations)."""
    if not getattr(study, "settings", None):
        return []
    lines = [
        f"Setting: the paper's, cell by cell as `orchestrator/study/paper_settings/{study.settings}.yaml` gives it "
        "(`--dry-run` lists every trial against it)."
    ]
    if study.deviations:
        lines += ["", "Where this study differs from the paper's setting, on purpose:", ""]
        for d in study.deviations:
            where = ", ".join(f"{k}={v}" for k, v in d.where.items()) or "every trial"
            lines.append(f"- `{d.key}` ({where}): {d.reason}")
    return [*lines, ""]


def stage_evaluation(study, stage: str) -> dict:
    """A stage's ``evaluation`` mapping (protocol and overrides) as the study file gives it."""
    for s in study.stages:  # the stage itself, or (rows of an older version of the study) its split parts
        if s.name == stage or s.name.startswith(f"{stage}-"):
            return to_dict(s.evaluation)
    return to_dict(study.stages[0].evaluation)  # a stage this study does not name: its first stage's


def protocol_of(row: dict):
    """The protocol a trial was evaluated with (the stage's, overrides included)."""
    from trainables.evaluation import get_protocol

    ev = row.get("evaluation") or {"protocol": test_view(row).get("protocol", "basic")}
    return get_protocol(ev["protocol"], ev.get("overrides"))


def attack_columns(
    rows: list[dict], *, only: tuple[str, ...] | None = None, without: tuple[str, ...] = ()
) -> list[tuple[str, str]]:
    """Table columns of the attacks the rows' protocols ran, from the attack registry
    (``only`` / ``without`` select attacks by name)."""
    from trainables.evaluation import ATTACKS

    cols: list[tuple[str, str]] = []
    for proto in map(protocol_of, rows):
        for name, budget in proto.attacks:
            if (only is None or name in only) and name not in without:
                cols += [c for c in ATTACKS.get(name).columns(budget) if c not in cols]
    return cols


CLEAN, ROBUST = ("clean", "clean_acc"), ("robust min", "robust_acc")


@register("ablation")
def ablation(rows, out, paper):
    arms = [r for r in rows if r["searched"].get("case")] or rows  # the natural starting model is no arm
    cols = [CLEAN, *attack_columns(arms), ROBUST]
    text = ["## Module ablation", "", _robust_table(arms, paper, cols, lambda r: [_arm(r)], ["case"])]
    files = _arm_bars(arms, paper, out, "ablation.png", "Table 7")
    return text + [x for f in files for x in ("", f"![ablation]({f.name})")], files


@register("compare")
def compare(rows, out, paper):
    main = [r for r in rows if r["stage"].startswith("main")] or rows  # main-wrn-published too
    cols = [CLEAN, *attack_columns(main, without=("invariance",)), ROBUST]
    inv = attack_columns(main, only=("invariance",))
    lab = lambda r: [r["config"]["model"], _arm(r)]  # noqa: E731
    text = [
        "## Robustness (Tables 2 and 3, AutoAttack beside)",
        "",
        _robust_table(main, paper, cols, lab, ["model", "method"]),
        "",
        "## Invariance (Table 5)",
        "",
        _robust_table(main, paper, inv, lab, ["model", "method"]),
    ]
    files = []
    for model in sorted({r["config"]["model"] for r in main}):
        files += _arm_bars(
            [r for r in main if r["config"]["model"] == model], paper, out, f"compare-{model}.png", "Table 2"
        )
    text += [x for f in files for x in ("", f"![{f.stem}]({f.name})")]
    return text, files


@register("init")
def init(rows, out, paper):
    """SPROUT from each starting model, and the controls that start PGD-AT and TRADES from the
    natural model (Figure 8), with robust accuracy against eps."""
    arms = [r for r in rows if r["stage"] != "pretrain"] or rows

    def lab(r):
        if r["searched"].get("case"):
            return [r["searched"]["case"]]
        ck = r["searched"].get("init_checkpoint") or "random"  # the earlier form: a searched start
        return [ck.split("method=")[-1] if "method=" in str(ck) else str(ck)]

    cols = [CLEAN, *attack_columns(arms, only=("pgd", "autoattack")), ROBUST]
    text = ["## Starting model (Figure 8)", "", _robust_table(arms, paper, cols, lab, ["start + method"])]
    files = _eps_curves(arms, out, "init.png", lambda r: lab(r)[0], "robust accuracy against eps (Figure 8)")
    if files:
        text += ["", f"![init]({files[0].name})"]
    return text, files


def _eps_curves(rows: list[dict], out: Path, name: str, label: Callable[[dict], str], title: str) -> list[Path]:
    """Test accuracy under PGD (solid) and AutoAttack (dashed) against eps, one colour per row."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED and test_view(r).get("curve_eps")]
    if not done:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in done:
        m = test_view(r)
        (line,) = ax.plot(m["curve_eps"], [100 * a for a in m["curve_pgd_acc"]], "o-", label=f"{label(r)} PGD")
        if m.get("curve_autoattack_acc"):
            aa = [100 * a for a in m["curve_autoattack_acc"]]
            ax.plot(m["curve_eps"], aa, "s--", color=line.get_color(), label=f"{label(r)} AutoAttack")
    ax.set_xlabel("eps (L-inf, pixel units)")
    ax.set_ylabel("test accuracy under attack, %")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return [_savefig(fig, out / name)]


@register("attack_strength")
def attack_strength(rows, out, paper):
    """Table 9 (PGD-20 with more random restarts), Figure 7 (PGD with more steps) and Figure 6
    (C&W-L-inf against eps) on the same checkpoints, each an evaluation stage of its own."""
    by_stage = {s: [r for r in rows if r["stage"] == s and r.get("certified")] for s in ("restarts", "steps", "cw-eps")}
    lab = lambda r: [r["trial_id"]]  # noqa: E731  (an evaluation stage's checkpoint: its name)
    text, files = [], []
    if by_stage["restarts"]:
        cols = [CLEAN, *attack_columns(by_stage["restarts"], only=("pgd",))]
        text += [
            "## Random restarts (Table 9)",
            "",
            _robust_table(by_stage["restarts"], paper, cols, lab, ["checkpoint"]),
            "",
        ]
    steps = [(r["trial_id"], _pgd_by_steps(test_view(r))) for r in by_stage["steps"]]
    if any(pts for _, pts in steps):
        files.append(
            _lines(
                steps, out / "attack_strength_steps.png", "PGD steps", "PGD-L-inf with more steps (Figure 7)", log=True
            )
        )
        text += ["## Attack steps (Figure 7)", "", f"![steps]({files[-1].name})", ""]
    cw = [(r["trial_id"], list(zip(test_view(r).get("curve_eps") or [], test_view(r).get("curve_cw_linf_acc") or [])))
          for r in by_stage["cw-eps"]]  # fmt: skip
    if any(pts for _, pts in cw):
        files.append(
            _lines(cw, out / "attack_strength_cw.png", "eps (L-inf, pixel units)", "C&W-L-inf against eps (Figure 6)")
        )
        text += ["## C&W-L-inf against eps (Figure 6)", "", f"![cw]({files[-1].name})", ""]
    return text, files


def _pgd_by_steps(m: dict) -> list[tuple[float, float]]:
    """(steps, accuracy) of the single-start PGD runs of a result."""
    pts = []
    for k, v in m.items():
        hit = re.fullmatch(r"pgd(\d+)_acc", k)
        if hit and _finite(v):
            pts.append((float(hit.group(1)), v))
    return sorted(pts)


def _lines(
    series: list[tuple[str, list[tuple[float, float]]]], path: Path, xlabel: str, title: str, log: bool = False
) -> Path:
    """One line per checkpoint: test accuracy (%) against ``xlabel``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series:
        if pts:
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], "o-", label=name)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy under attack, %")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _savefig(fig, path)


@register("imagenet")
def imagenet(rows, out, paper):
    cols = [CLEAN, *attack_columns(rows, only=("targeted", "autoattack"))]
    text = [
        "## ImageNet, random-targeted PGD (Table 4)",
        "",
        _robust_table(rows, paper, cols, lambda r: [r["config"]["method"]], ["method"]),
    ]
    files = _targeted_curves(rows, paper, out)
    if files:
        text += ["", f"![imagenet]({files[0].name})"]
    return text, files


def _targeted_curves(rows: list[dict], paper: dict, out: Path) -> list[Path]:
    """Accuracy under random-targeted PGD against eps, ours (solid) beside the paper's (dotted)."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED]
    series = []
    for r in done:
        m, cell = test_view(r), paper_cell(paper, r)
        keys = sorted(
            (k for k in m if k.startswith("pgd_targeted_acc_eps")), key=lambda k: float(k.rsplit("eps", 1)[1])
        )
        if keys:
            series.append((r["config"]["method"], keys, m, cell))
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, keys, m, cell in series:
        eps = [float(k.rsplit("eps", 1)[1]) for k in keys]
        (line,) = ax.plot(eps, [100 * m[k] for k in keys], "o-", label=f"{method} (ours)")
        if any(k in cell for k in keys):
            ax.plot(eps, [cell.get(k, math.nan) for k in keys], "o:", color=line.get_color(), label=f"{method} (paper)")
    ax.set_xlabel("eps (L-inf, pixel units)")
    ax.set_ylabel("top-1 accuracy under random-targeted PGD, %")
    ax.legend(fontsize=8)
    return [_savefig(fig, out / "imagenet.png")]


@register("training_cost")
def training_cost(rows, out, paper):
    """Robust accuracy against training time (Backward Smoothing's Table 2): each arm's clean,
    PGD and AutoAttack accuracy, its training minutes and their ratio to TRADES', the paper's beside."""
    done = [r for r in rows if r["status"] == TrialStatus.COMPLETED]

    def minutes(r):
        m = r["metrics"]
        per_epoch = m.get("mean_epoch_time_s") or m.get("epoch_time_s")
        return per_epoch * r["config"]["epochs"] / 60 if per_epoch else None

    ours_trades = next((minutes(r) for r in done if _arm(r) == "TRADES"), None)
    paper_trades = next((c.get("train_minutes") for c in paper.get("cells", []) if c.get("case") == "TRADES"), None)
    cols = [CLEAN, *attack_columns(done, only=("pgd", "autoattack")), ROBUST]
    table = []
    for r in done:
        cell, mins = paper_cell(paper, r), minutes(r)
        ratio = mins / ours_trades if mins and ours_trades else None
        pratio = cell["train_minutes"] / paper_trades if cell.get("train_minutes") and paper_trades else None
        table.append([_arm(r), _num(mins, "{:.1f}"), _num(ratio, "{:.2f}x"),
                      _num(cell.get("train_minutes"), "{:.0f}"), _num(pratio, "{:.2f}x")])  # fmt: skip
    text = [
        "## Robustness (Table 2)",
        "",
        _robust_table(done, paper, cols, lambda r: [_arm(r)], ["method"]),
        "",
        "## Training time",
        "",
        "Minutes of training on this study's devices (epochs x the mean epoch after the first) and the ratio to "
        "TRADES measured in the same study, beside the paper's minutes on its GPU and its ratio.",
        "",
        _md_table(["method", "minutes", "x TRADES", "paper minutes", "paper x TRADES"], table),
    ]
    files = _cost_scatter(done, paper, minutes, ours_trades, paper_trades, out)
    return text + [x for f in files for x in ("", f"![training cost]({f.name})")], files


def _cost_scatter(rows, paper, minutes, ours_trades, paper_trades, out: Path) -> list[Path]:
    """Robust accuracy against training time relative to TRADES: ours (the per-image worst case,
    AutoAttack included) and the paper's (PGD-100)."""
    points = [(r, minutes(r), test_view(r).get("robust_acc")) for r in rows]
    points = [(r, t, a) for r, t, a in points if t and a is not None and ours_trades]
    if not points:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, t, a in points:
        ax.scatter(t / ours_trades, 100 * a, marker="o")
        ax.annotate(_arm(r), (t / ours_trades, 100 * a), fontsize=7)
        cell = paper_cell(paper, r)
        if cell.get("train_minutes") and cell.get("pgd100_acc") is not None and paper_trades:
            ax.scatter(cell["train_minutes"] / paper_trades, cell["pgd100_acc"], marker="x", c="k")
    ax.set_xlabel("training time / TRADES' (o ours: worst case incl. AutoAttack; x paper: PGD-100)")
    ax.set_ylabel("robust accuracy, %")
    return [_savefig(fig, out / "training_cost.png")]


# ----------------------------------------------------------------------------- beta (Figure 4)
def beta_plots(rows: list[dict], out: Path) -> list[Path]:
    """For every SPROUT trial, beta_s * beta_t (the paper's Figure 4) at the start and at the
    end of training, side by side, on one colour scale shared by every trial and panel."""
    import numpy as np

    trials = [
        (
            r,
            np.asarray(r["metrics"]["beta"], float),
            np.asarray(r["metrics"].get("beta_start") or r["metrics"]["beta"], float),
        )
        for r in rows
        if r["metrics"].get("beta")
    ]
    if not trials:
        return []
    vmax = max(max(np.outer(b, b).max(), np.outer(b0, b0).max()) for _, b, b0 in trials)
    plt = _plt()
    files = []
    d = out / "beta"
    d.mkdir(exist_ok=True)
    for r, b, b0 in trials:
        k = len(b)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        for ax, vec, when in ((axes[0], b0, "start"), (axes[1], b, "end")):
            im = ax.imshow(np.outer(vec, vec), cmap="magma", vmin=0.0, vmax=vmax)
            ax.set_title(f"beta at the {when}", fontsize=9)
            ax.set_xlabel("class t")
            ax.set_ylabel("class s")
            ax.set_xticks(range(k))
            ax.set_yticks(range(k))
        fig.colorbar(im, ax=axes, shrink=0.85, label="beta_s * beta_t")
        drift = r["metrics"].get("beta_drift")
        fig.suptitle(
            f"{r['stage']} {r['trial_id']}: beta moved {100 * drift:.2f} % (||end - start|| / ||start||)"
            if drift is not None
            else f"{r['stage']} {r['trial_id']}",
            fontsize=9,
        )
        files.append(_savefig(fig, d / f"beta_{r['stage']}_{r['trial_id']}.png", tight=False))
    return files


def beta_section(rows: list[dict]) -> list[str]:
    """How far beta moved in each SPROUT trial: whether it learned anything at all."""
    sprout = [r for r in rows if r["metrics"].get("beta_drift") is not None]
    if not sprout:
        return []
    table = [
        [
            r["stage"],
            r["trial_id"],
            _num(100 * r["metrics"]["beta_drift"], "{:.2f}"),
            _num(r["metrics"].get("beta_mean"), "{:.4f}"),
            _num(r["metrics"].get("beta_std"), "{:.4f}"),
        ]
        for r in sprout
    ]
    return [
        "",
        "## How far beta moved",
        "",
        "Relative change ||beta_end - beta_start|| / ||beta_start|| in %, "
        "and beta's mean and spread at the end (`beta/*.png`: the start beside the end).",
        "",
        _md_table(["stage", "trial", "beta drift %", "beta mean", "beta std"], table),
    ]
