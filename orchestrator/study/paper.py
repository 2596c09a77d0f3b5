"""The paper's published numbers that a study puts beside its own (``paper:`` names a file in
``orchestrator/study/paper_numbers/``, each cell with its table reference).

A cell names the trials it describes by the match keys it gives (``method``, ``model``, ``case``,
``model_args.width``) and holds the paper's numbers for them, in % (accuracies) or seconds. A
trial takes the numbers of every cell that matches it (the natural WRN's Table 2 numbers and its
Table 5 invariance numbers are two cells). Two cells that could match the same trial and give
one number differently are an error when the file loads. ``headline`` names the number the
console table shows beside ours."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.schema import flatten, load_yaml_file

PAPER_DIR = Path(__file__).resolve().parent / "paper_numbers"
MATCH_KEYS = ("method", "model", "case", "model_args.width")
PERCENT_SUFFIXES = ("_acc", "_acc_max")  # numbers the paper gives in %; ours are fractions


def _numbers(cell: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cell.items() if k not in MATCH_KEYS}


def _could_share_a_trial(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(str(a[k]) == str(b[k]) for k in MATCH_KEYS if k in a and k in b)


def _check_cells(cells: list, where: str) -> None:
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not any(k in cell for k in MATCH_KEYS):
            raise ConfigError(f"{where}: cells[{i}]: expected a mapping naming at least one of {', '.join(MATCH_KEYS)}")
        for k, v in _numbers(cell).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}: cells[{i}].{k}: expected a number, got {v!r}")
    for i, a in enumerate(cells):
        for j in range(i + 1, len(cells)):
            b = cells[j]
            if not _could_share_a_trial(a, b):
                continue
            for k in _numbers(a).keys() & _numbers(b).keys():
                if a[k] != b[k]:
                    raise ConfigError(
                        f"{where}: cells[{i}] and cells[{j}] both describe {_describe(a, b)} but disagree on {k} "
                        f"({a[k]} vs {b[k]}); expected one number per trial"
                    )


def _describe(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = {k: a.get(k, b.get(k)) for k in MATCH_KEYS if k in a or k in b}
    return ", ".join(f"{k}={v}" for k, v in keys.items())


def load_paper_numbers(name: str | None, where: str = "paper") -> dict[str, Any]:
    """The paper's published numbers named by a study's ``paper:`` key; an unknown name, a file of
    the wrong shape, or two cells that disagree is an error, like every other name in a study."""
    if not name:
        return {}
    known = sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))
    if name not in known:
        raise ConfigError(f"{where}: unknown paper-numbers file {name!r}; expected one of: {', '.join(known)}")
    path = PAPER_DIR / f"{name}.yaml"
    data = load_yaml_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("cells", []), list):
        raise ConfigError(f"{where}: {path}: expected a mapping with a list of cells")
    _check_cells(data.get("cells", []), f"{where}: {path}")
    headline = data.get("headline")
    if headline is not None and not any(headline in c for c in data["cells"]):
        raise ConfigError(f"{where}: {path}: headline {headline!r} is a number no cell gives")
    return data


def matches(cell: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a summary row (its resolved config and searched values) is the trial ``cell`` describes."""
    flat = {**flatten(row.get("config") or {}), **(row.get("searched") or {})}
    return all(str(flat.get(k)) == str(cell[k]) for k in MATCH_KEYS if k in cell)


def paper_cell(paper: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """Every number the paper gives for this row's trial (the union of the matching cells; the
    file was checked for disagreements when it loaded), in the paper's units."""
    out: dict[str, Any] = {}
    for cell in paper.get("cells", []):
        if matches(cell, row):
            out.update(cell)
    return out


def paper_metrics(paper: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, float]:
    """The paper's numbers for this row in our units (accuracies as fractions, seconds as given),
    under our metric names: what summary files and MLflow record beside our own numbers."""
    out = {}
    for k, v in _numbers(paper_cell(paper, row)).items():
        out[k] = round(v / 100.0, 6) if k.endswith(PERCENT_SUFFIXES) else float(v)
    return out
