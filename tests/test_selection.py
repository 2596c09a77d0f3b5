"""Selection on the validation split: nothing measured on the test split reaches Optuna, ASHA
or the choice of finalists. Unit tests on canned rows, and one search run twice on data that
differ only in their test labels."""

import json
import textwrap

import pytest

from orchestrator.results.tables import table
from orchestrator.study.intervals import intervals, wilson
from orchestrator.study.load import load_raw, parse
from orchestrator.study.names import val_name
from orchestrator.study.selection import mark_finalists, pareto


def test_wilson_interval_matches_the_closed_form_and_stays_in_bounds():
    lo, hi = wilson(0.7, 100)
    assert lo == pytest.approx(0.6042, abs=1e-4) and hi == pytest.approx(0.7811, abs=1e-4)  # about +-9 points
    lo, hi = wilson(0.7, 10_000)
    assert hi - lo == pytest.approx(0.018, abs=1e-3)  # about +-0.9
    assert wilson(0.0, 10)[0] == 0.0 and wilson(1.0, 10)[1] == pytest.approx(1.0) and wilson(1.0, 10)[0] < 1
    ci = intervals(
        {
            "clean_acc": 0.9,
            "n_eval": 100,
            "autoattack_acc": 0.5,
            "autoattack_n": 20,
            "robust_acc": 0.5,
            "robust_acc_min_n": 20,
            "val/robust_acc": 0.6,
            "val/robust_acc_min_n": 50,
            "loss": 0.3,
        }
    )
    assert set(ci) == {"clean_acc", "autoattack_acc", "robust_acc", "val/robust_acc"}
    assert ci["autoattack_acc"] == [round(x, 4) for x in wilson(0.5, 20)]
    assert ci["val/robust_acc"] == [round(x, 4) for x in wilson(0.6, 50)]


def test_a_search_selects_on_validation_names_only():
    raw, src = load_raw(name="sensitivity")
    stage = parse(raw, src).stages[0]
    assert stage.search.selects and stage.search.objectives == ["val/clean_acc", "val/robust_acc"]
    assert stage.base["data"]["val_size"] == 0.2  # digits' default, written into every trial's config
    raw, src = load_raw(name="width")  # a grid selects nothing: the full training split, test metrics
    stage = parse(raw, src).stages[0]
    assert not stage.search.selects and stage.search.objectives == [] and "data" not in stage.base
    assert val_name("robust_acc") == "val/robust_acc" and val_name("loss") == "loss"


def _row(tid, val, test, status="completed", default=False):
    return {
        "trial_id": tid,
        "stage": "main",
        "status": status,
        "config": {"method": "sprout"},
        "searched": {},
        "paper_default": default,
        "metrics": {
            "val/clean_acc": val[0],
            "val/robust_acc": val[1],
            "test/clean_acc": test[0],
            "test/robust_acc": test[1],
            "test/n_eval": 100,
            "test/robust_acc_min_n": 100,
            "val/robust_acc_min_n": 50,
            "val/n_eval": 50,
        },
    }


def test_finalists_are_the_validation_pareto_set_whatever_the_test_split_says():
    val = {"a": (0.9, 0.5), "b": (0.8, 0.7), "c": (0.7, 0.6), "d": (0.95, 0.4), "e": (0.6, 0.8)}
    objectives, modes = ["val/clean_acc", "val/robust_acc"], ["max", "max"]
    assert sorted(pareto([val[k] for k in "abcde"])) == [0, 1, 3, 4]  # c is dominated by b
    chosen = []
    for test in ({k: (0.5, 0.5) for k in val}, {k: (0.1 * i, 1 - 0.1 * i) for i, k in enumerate(val)}):
        rows = [_row(k, val[k], test[k]) for k in val] + [_row("f", (0.99, 0.99), (0.99, 0.99), status="failed")]
        mark_finalists(rows, objectives, modes, k=3)
        chosen.append({r["trial_id"] for r in rows if r["finalist"]})
    # at most 3 of the Pareto set, by validation robust accuracy; a failed trial never
    assert chosen[0] == chosen[1] == {"e", "b", "a"}
    rows = [_row(k, val[k], (0.5, 0.5), default=(k == "c")) for k in val]
    mark_finalists(rows, objectives, modes, k=1)
    assert {r["trial_id"] for r in rows if r["finalist"]} == {"e", "c"}  # the paper defaults always go on
    text = table(rows)
    lines = text.splitlines()
    assert lines[2].split()[0] == "^e" and "selected on validation (50 images;" in text and "±" in lines[2]
    assert max(len(x) for x in lines) <= 120


def test_with_seeds_a_search_chooses_points_on_their_mean_and_certifies_all_their_seeds():
    """Point p has the single best trial (a lucky seed) but the lower mean; q wins on its mean. A
    point with a failed seed is not chosen, however good its other seed."""
    objectives, modes = ["val/robust_acc"], ["max"]
    val = {"p0": 0.9, "p1": 0.3, "q0": 0.7, "q1": 0.7, "r0": 0.95}
    rows = [_row(k, (0.9, v), (0.5, 0.5)) | {"seed_group": k[0]} for k, v in val.items()]
    rows.append(_row("r1", (0.9, 0.9), (0.5, 0.5), status="failed") | {"seed_group": "r"})
    mark_finalists(rows, objectives, modes, k=1, by_seeds=True)
    assert {r["trial_id"] for r in rows if r["finalist"]} == {"q0", "q1"}
    mark_finalists(rows, objectives, modes, k=1)  # without seeds: each trial on its own
    assert {r["trial_id"] for r in rows if r["finalist"]} == {"r0"}


def test_a_searched_method_has_one_column_and_other_searched_keys_their_own():
    """The width study's grid searches ``method`` beside ``model_args.width``: one method column."""
    rows = [_row(k, (0.9, 0.5), (0.5, 0.5)) for k in "ab"]
    for r, (method, width) in zip(rows, [("sprout", 1), ("trades", 4)]):
        r["config"]["method"], r["searched"] = method, {"method": method, "model_args.width": width}
    head, _, first, second = table(rows).splitlines()[:4]
    assert head.split().count("method") == 1 and "width" in head
    assert {first.split()[1], second.split()[1]} == {"sprout", "trades"}


# ----------------------------------------------------------------------------- end to end
SEARCH = (
    "{algorithm: optuna, num_samples: 3, metric: robust_acc, "
    "params: {optim.lr: {type: float, low: 0.02, high: 0.3, log: true}}}"
)
STUDY = textwrap.dedent("""
    name: leak
    base: {method: natural, dataset: cifar10, model: small_cnn, model_args: {width: 8}, epochs: 3, batch_size: 32,
           eps: 0.01, monitor: {n: 32, pgd_steps: 2}, data: {download: false, val_size: 40}}
    stages:
      - {name: original, base: {data: {root: ROOT_A}}, search: SEARCH, evaluation: {protocol: basic, screen: basic}}
      - {name: relabelled, base: {data: {root: ROOT_B}}, search: SEARCH, evaluation: {protocol: basic, screen: basic}}
    resources: {max_concurrent_trials: 2}
""")


@pytest.mark.slow  # one sweep: two Optuna searches of 3 trials, two at a time in batches (search.batch)
def test_changing_only_the_test_labels_changes_no_choice(tmp_path):
    """The same search on two copies of a data set that differ only in the test split's labels:
    TPE's model-based third trial, the validation numbers and the finalists must be the same
    (they would differ if a test-split number reached Optuna or the choice), while the test
    numbers differ."""
    from helpers import sweep, write_cifar10

    a, b = tmp_path / "a", tmp_path / "b"
    write_cifar10(a, lambda y: y)
    write_cifar10(b, lambda y: (y + 3) % 10)  # every test label wrong: test accuracy collapses
    text = STUDY.replace("ROOT_A", str(a)).replace("ROOT_B", str(b)).replace("SEARCH", SEARCH)
    f = tmp_path / "leak.yaml"
    f.write_text(text)
    out = tmp_path / "out"
    sweep("--config", str(f), "--output-dir", str(out), cwd=tmp_path)
    trials = json.loads((out / "summary.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed"] * 6
    by = {s: {t["searched"]["optim.lr"]: t for t in trials if t["stage"] == s} for s in ("original", "relabelled")}
    # the same three learning rates: the two seeded random start-up ones and TPE's third, which
    # follows the objectives of the first two (it would differ if they were test numbers)
    assert sorted(by["original"]) == sorted(by["relabelled"]) and len(by["original"]) == 3, by
    for lr, t in by["original"].items():
        twin = by["relabelled"][lr]
        assert t["metrics"]["val/robust_acc"] == twin["metrics"]["val/robust_acc"]
        assert t["metrics"]["val/clean_acc"] == twin["metrics"]["val/clean_acc"]
        assert t["finalist"] == twin["finalist"]
    assert any(t["finalist"] for t in by["original"].values())
    # the test split is read only by the finalists' certification: the other trials have no
    # test number at all
    for t in trials:
        assert t["finalist"] == any(k.startswith("test/") for k in t["metrics"]), t["trial_id"]
    # while the test numbers are read from each copy's own test labels: the models learnt the
    # classes, so the relabelled copy's test accuracy collapses (the choice would have moved)
    original = [t["metrics"]["test/clean_acc"] for t in by["original"].values() if t["finalist"]]
    relabelled = [t["metrics"]["test/clean_acc"] for t in by["relabelled"].values() if t["finalist"]]
    assert max(original) > 0.6 and max(relabelled) < 0.3, (original, relabelled)


def test_the_search_plots_show_what_the_search_selected_on():
    """Optuna's Pareto plot marks its "best trials": drawn from validation numbers they are the
    search's own finalists, not a choice made on the test split."""
    from orchestrator.results.reports import _plotted

    rows = [_row(k, (0.9, 0.5 + 0.1 * i), (0.5, 0.5)) for i, k in enumerate("abc")]
    assert _plotted(rows) == ["val/clean_acc", "val/robust_acc"]
    del rows[0]["metrics"]["val/robust_acc"]  # a study without a validation split: the test's
    assert _plotted(rows) == ["test/clean_acc", "test/robust_acc"]
