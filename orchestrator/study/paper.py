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

from .refs import is_ref, parse_ref

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


def _named_file(directory: Path, name: str, kind: str, where: str) -> tuple[Path, Any]:
    """The YAML file ``name`` of ``directory`` and its content; an unknown name is one clear error."""
    known = sorted(p.stem for p in directory.glob("*.yaml"))
    if name not in known:
        raise ConfigError(f"{where}: unknown {kind} file {name!r}; expected one of: {', '.join(known)}")
    path = directory / f"{name}.yaml"
    return path, load_yaml_file(path)


def load_paper_numbers(name: str | None, where: str = "paper") -> dict[str, Any]:
    """The paper's published numbers named by a study's ``paper:`` key; an unknown name, a file of
    the wrong shape, or two cells that disagree is an error, like every other name in a study."""
    if not name:
        return {}
    path, data = _named_file(PAPER_DIR, name, "paper-numbers", where)
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


# ----------------------------------------------------------------------------- the paper's settings
SETTINGS_DIR = Path(__file__).resolve().parent / "paper_settings"
# a settings cell names a training-config key (its first part one of these), what the training
# forwards run in, where a model came from, or a budget of the certification protocol
CONFIG_KEYS = (
    "method", "dataset", "model", "epochs", "batch_size", "seed", "eps", "init_checkpoint",
    "method_args", "model_args", "optim", "data", "monitor", "fast",
)  # fmt: skip
OTHER_KEYS = ("precision", "origin")  # origin: "trained" here, or "published" (a released checkpoint)
WHERE_KEYS = (*MATCH_KEYS, "stage", "fast.amp")


def _check_setting(cell: Any, i: int, where: str) -> None:
    at = f"{where}: cells[{i}]"
    if not isinstance(cell, dict) or "key" not in cell or "value" not in cell:
        raise ConfigError(f"{at}: expected a mapping with key, value and source (or unspecified)")
    unknown = set(cell) - {"key", "value", "where", "source", "unspecified"}
    if unknown:
        raise ConfigError(
            f"{at}: unknown field {sorted(unknown)[0]!r}; expected key, value, where, source, unspecified"
        )
    key = str(cell["key"])
    if not (key.split(".")[0] in CONFIG_KEYS or key in OTHER_KEYS or key.startswith("evaluation.")):
        raise ConfigError(
            f"{at}.key: {key!r} names no setting; expected a training-config key, {', '.join(OTHER_KEYS)} "
            "or evaluation.<eps|step_frac|ATTACK[.FIELD]>"
        )
    if ("source" in cell) == ("unspecified" in cell):
        raise ConfigError(f"{at}: expected source (where the paper says it) or unspecified (why this value), not both")
    bad = [k for k in cell.get("where") or {} if k not in WHERE_KEYS]
    if bad:
        raise ConfigError(f"{at}.where: {bad[0]!r}: expected one of {', '.join(WHERE_KEYS)}")


def load_paper_settings(name: str | None, where: str = "settings") -> dict[str, Any]:
    """The paper's setting of one experiment (``settings:`` in a study): cells of ``key``,
    ``value``, optional ``where`` (which trials) and ``source`` (table, section or figure) or
    ``unspecified`` (the paper does not say: why this value). A cell that names no setting is an
    error, like every other name in a study."""
    if not name:
        return {}
    path, data = _named_file(SETTINGS_DIR, name, "paper-settings", where)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or not data.get("source"):
        raise ConfigError(f"{where}: {path}: expected a mapping with a source and a list of cells")
    for i, cell in enumerate(data["cells"]):
        _check_setting(cell, i, f"{where}: {path}")
    return data


def _applies(where: Mapping[str, Any], trial: Mapping[str, Any]) -> bool:
    flat = {**flatten(trial["config"]), **(trial.get("searched_flat") or {}), "stage": trial.get("stage")}
    return all(str(flat.get(k)) == str(v) for k, v in (where or {}).items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def _start(trial: Mapping[str, Any], stage_methods: Mapping[str, set]) -> str | None:
    """What a trial starts from: ``random``, a method's name (the stage it references trains
    only that method), or None (a file)."""
    ck = trial["config"].get("init_checkpoint")
    if not ck:
        return "random"
    if is_ref(ck):
        stage, wanted = parse_ref(ck, "init_checkpoint")
        methods = stage_methods.get(stage, set())
        return wanted.get("method") or (next(iter(methods)) if len(methods) == 1 else None)
    return None


def _actual(key: str, trial: Mapping[str, Any], stage_methods: Mapping[str, set]) -> Any:
    if key == "precision":
        return trial.get("precision")
    if key == "origin":  # an evaluated checkpoint named with a published format, or a trained model
        from trainables.published import split_format

        ck = str(trial["config"].get("init_checkpoint") or "")
        return "published" if trial.get("evaluated") and split_format(ck)[0] else "trained"
    if key == "init_checkpoint":
        return _start(trial, stage_methods)
    if key.startswith("evaluation."):
        budgets = trial.get("certify_budgets") or {}
        path = key.split(".")[1:]
        if path[0] in ("eps", "step_frac", "n"):
            value = budgets.get(path[0])
            return trial["config"].get("eps") if path[0] == "eps" and value is None else value
        attack = budgets.get(path[0])
        if len(path) == 1:
            return attack is not None
        value = None if attack is None else attack.get(path[1])
        if path == ["cw_l2", "radius"] and attack is not None and value is None:  # the data set's radius
            from trainables.data import DATASETS

            value = DATASETS.get(trial["config"]["dataset"]).cw_l2_radius
        return value
    return flatten(trial["config"]).get(key)


def settings_findings(settings: Mapping[str, Any], trials: list[dict], deviations=()) -> list[dict[str, Any]]:
    """Every (settings cell, trial) where the study's resolved trial differs from the paper's
    setting, each with the study's declared deviation (or None), and every declared deviation no
    trial needs. A trial is ``{"stage", "config", "searched_flat", "precision", "certify_budgets"}``
    (and ``evaluated``: an evaluation stage's checkpoint, checked on its protocol only)."""
    stage_methods: dict[str, set] = {}
    for t in trials:
        stage_methods.setdefault(t["stage"], set()).add(t["config"]["method"])
    used, out = set(), []
    for cell in settings.get("cells", []):
        for t in trials:
            if not _applies(cell.get("where") or {}, t):
                continue
            if t.get("evaluated") and not cell["key"].startswith(("evaluation.", "origin")):
                continue  # an evaluated checkpoint: its training is checked on the trial that trained it
            got, want = _actual(cell["key"], t, stage_methods), cell["value"]
            if cell["key"] == "evaluation.pgd.runs" and isinstance(got, (list, tuple)):
                ok = all(any(_same(w, g) for g in got) for w in want)  # the paper's runs are among ours
            else:
                ok = _same(got, want)
            if ok:
                continue
            dev = next((i for i, d in enumerate(deviations) if d.key == cell["key"] and _applies(d.where, t)), None)
            if dev is not None:
                used.add(dev)
            out.append({"key": cell["key"], "stage": t["stage"], "trial": t.get("label", ""), "paper": want, "study": got,
                        "deviation": deviations[dev].reason if dev is not None else None})  # fmt: skip
    for i, d in enumerate(deviations):
        if i not in used:
            out.append({"key": d.key, "stage": None, "trial": None, "paper": None, "study": None,
                        "deviation": d.reason, "stale": True})  # fmt: skip
    return out
