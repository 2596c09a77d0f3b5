"""The results table printed at the end of a study."""

from __future__ import annotations

import textwrap

from trainables.cli import one_line

from ..study import EVALUATED, TEST, VAL, finite, short_name
from .format import num, pct, pm

TABLE_WIDTH = 120


def _same_images(m: dict, key: str) -> str:
    """The test number of ``key`` on the worst case's images (``wc_``), as the rest of the row."""
    return pct(m.get(f"{TEST}wc_{key}", m.get(TEST + key)))


def _counts(rows: list[dict], key: str) -> str:
    return "/".join(map(str, sorted({int(r["metrics"][key]) for r in rows if finite(r["metrics"].get(key))})))


def _order(rows: list[dict], selected: bool) -> list[dict]:
    """A search's table is ordered by what it selected on (validation), never by the test split."""
    key = VAL + "robust_acc" if selected else TEST + "robust_acc"
    return sorted(rows, key=lambda r: (-(r["metrics"][key] if finite(r["metrics"].get(key)) else -1.0), r["trial_id"]))


def on_digits(rows: list[dict]) -> bool:
    """Whether any trial ran on the embedded digits, a data set no paper number was measured on."""
    return any(r["config"].get("dataset") == "digits" for r in rows)


def paper_label(key: str) -> str:
    """The console's name for a paper number: ``pgd20_acc`` -> ``paper pgd20%``."""
    for suffix in ("_acc_max", "_acc"):
        if key.endswith(suffix):
            return f"paper {key.removesuffix(suffix)}%{' max' if suffix == '_acc_max' else ''}"
    return f"paper {key}"


def _paper_value(r: dict, key: str) -> str:
    v = r.get("paper", {}).get(key)
    return pct(v) if key.endswith(("_acc", "_acc_max")) else num(v)


def _footer(rows: list[dict], selected: bool, paper: tuple[str, str] | None = None) -> list[str]:
    lines = []
    nval, ntest, nsame = (
        _counts(rows, VAL + "n_eval"),
        _counts(rows, TEST + "n_eval"),
        _counts(rows, TEST + "robust_acc_min_n"),
    )
    if selected:
        lines.append(
            f"^ finalists: selected on validation ({nval or '?'} images; val rob%: the screening's worst case, "
            f"± its 95 % interval), certified on test ({ntest or 'no'} images)."
        )
    elif ntest and rows and all(r.get("selected_on") == EVALUATED for r in rows):
        lines.append(
            f"^ certified on test ({ntest} images): every checkpoint of an evaluation stage (nothing trained)."
        )
    elif ntest:
        lines.append(f"^ certified on test ({ntest} images): every completed trial of a grid.")
    if nsame:
        lines.append(
            f"clean%, pgd20%, AA% and robust% are the test split's, on the same {nsame} images (those every "
            "attack ran on); robust%: correct clean and under every white-box attack (the number to trust), "
            "± its 95 % interval (Wilson). summary.csv has every number on all its images."
        )
    if paper:
        key, source = paper
        lines.append(
            f"{paper_label(key)}: the paper's number for the same method and model ({source}), in its own setting; "
            "where a study's setting differs from the paper's, docs/studies.md says how."
            + (
                " These trials ran on the 8x8 digits (a --smoke-test): not the paper's setting, so the column "
                "compares nothing."
                if on_digits(rows)
                else ""
            )  # fmt: skip
        )
    if any(r.get("paper_default") for r in rows):
        lines.append("* the paper's default hyperparameters. PGD alone is an upper bound on robustness.")
    else:
        lines.append("PGD alone is an upper bound on robustness.")
    return [w for x in lines for w in textwrap.wrap(x, TABLE_WIDTH)]


SEED_COLUMNS = (("clean%", "clean_acc"), ("pgd20%", "pgd20_acc"), ("AA%", "autoattack_acc"), ("robust%", "robust_acc"))


def seed_lines(rows: list[dict]) -> list[str]:
    """One line per point repeated across seeds: the test numbers' mean and sample sd."""
    from .summary import seed_summaries

    lines = []
    for g in seed_summaries(rows):
        point = " ".join(f"{short_name(k)}={num(v)}" for k, v in g["point"].items())
        parts = [
            f"{label} {100 * g['mean'][TEST + key]:.1f}±{100 * g['sd'][TEST + key]:.1f}"
            for label, key in SEED_COLUMNS
            if TEST + key in g["mean"]
        ]
        seeds = ",".join(map(str, g["seeds"]))
        lines += textwrap.wrap(
            f"across seeds {seeds} ({g['n']} trials), mean ± sd on all their test images: {point}: "
            f"{', '.join(parts) or 'no test numbers'}",
            TABLE_WIDTH,
        )
    return lines


def table(rows: list[dict], paper: tuple[str, str] | None = None) -> str:
    """Accuracies in %, the finalists marked ^ and the paper-default trial *, at most TABLE_WIDTH
    characters (the right-most columns go first; summary.csv has them all), and a footer saying
    on which split and how many images each number was measured. ``paper`` (the headline number's
    key, the source) adds the paper's number beside ours, for the rows it describes."""
    paper = paper if paper and any(paper[0] in r.get("paper", {}) for r in rows) else None
    # a searched method has its column already (the config's method is the searched one)
    searched = sorted({k for r in rows for k in r["searched"]} - {"method"})
    selected = any(r.get("selected_on") == "validation" for r in rows)
    staged = len({r["stage"] for r in rows}) > 1  # one stage: its name says nothing
    head = [
        "trial",
        *(["stage"] if staged else []),
        "method",
        *[short_name(k) for k in searched],
        "status",
        *(["val rob%"] if selected else []),
        "clean%",
        "pgd20%",
        "AA%",
        "robust%",
        *([paper_label(paper[0])] if paper else []),
        "s/ep",
        "masking",
    ]
    body = []
    for r in _order(rows, selected):
        m = r["metrics"]
        mark = ("^" if r.get("finalist") else "") + ("*" if r.get("paper_default") else "")
        flags = m.get(TEST + "masking_flags")
        body.append(
            [
                mark + r["trial_id"],
                *([r["stage"]] if staged else []),
                r["config"].get("method"),
                *[num(r["searched"].get(k)) for k in searched],
                r["status"],
                *([pm(m, VAL + "robust_acc")] if selected else []),
                _same_images(m, "clean_acc"),
                _same_images(m, "pgd20_acc"),
                _same_images(m, "autoattack_acc"),
                pm(m, TEST + "robust_acc"),
                *([_paper_value(r, paper[0])] if paper else []),
                num(m.get("epoch_time_s")),
                "-" if flags is None else (f"{len(flags)} flag(s)" if flags else "ok"),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    keep = len(head)
    while sum(widths[:keep]) + 2 * (keep - 1) > TABLE_WIDTH and keep > 6:
        keep -= 1
    fmt = lambda cells: "  ".join(str(x).ljust(w) for x, w in zip(cells[:keep], widths[:keep])).rstrip()  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body] + _footer(rows, selected, paper)
    lines += seed_lines(rows)
    lines += [one_line(f"failed {r['trial_id']}: {r['error']}", TABLE_WIDTH) for r in rows if r.get("error")]
    return "\n".join(lines)
