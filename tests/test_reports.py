"""Each study's report step, on stored (synthetic) results, and one multi-stage study end to end."""

import json
from pathlib import Path

import pytest
from helpers import sweep

from orchestrator.results import reports
from orchestrator.study.load import load_raw, parse


def row(stage="main", trial="t_00000", status="completed", searched=None, **cfg_and_metrics):
    metrics = cfg_and_metrics.pop("metrics", {})
    cfg = {"method": "sprout", "model": "vgg16", "dataset": "cifar10", "model_args": {}, **cfg_and_metrics}
    base = {
        "clean_acc": 0.9,
        "robust_acc": 0.5,
        "pgd20_acc": 0.6,
        "autoattack_acc": 0.5,
        "autoattack_n": 100,
        "n_eval": 100,
        "masking_flags": [],
        "epoch_time_s": 1.0,
        "mean_epoch_time_s": 1.0,
        "images_per_s": 100.0,
    }
    # a certified trial: its evaluation's numbers under test/, its training's bare
    named = {k if k in TRAINING or k.startswith("beta") else f"test/{k}": v for k, v in {**base, **metrics}.items()}
    return {
        "trial_id": trial,
        "stage": stage,
        "study": "s",
        "config": cfg,
        "searched": searched or {},
        "metrics": named,
        "status": status,
        "mlflow_run_id": "r",
        "checkpoint": None,
    }


TRAINING = ("epoch_time_s", "mean_epoch_time_s", "images_per_s", "mean_images_per_s", "precision")


def study(name):
    raw, src = load_raw(name=name)
    return parse(raw, src)


def _sensitivity_rows(n):
    import random

    rnd = random.Random(0)
    rows = []
    for i in range(n):
        s = {
            "method_args.alpha": 10 ** rnd.uniform(-3, -0.3),
            "method_args.mixup_a": 10 ** rnd.uniform(-1.3, 0.3),
            "method_args.delta": rnd.uniform(0, 0.3),
            "method_args.lr_beta": 10 ** rnd.uniform(-3, -0.3),
        }
        if i == 0:
            s = {
                "method_args.alpha": 0.01,
                "method_args.mixup_a": 0.2,
                "method_args.delta": 0.1,
                "method_args.lr_beta": 0.01,
            }
        rows.append(
            row(
                trial=f"t_{i:05d}",
                searched=s,
                metrics={
                    "robust_acc": 0.3 + s["method_args.delta"],
                    "clean_acc": 0.95 - s["method_args.delta"],
                    "beta": [1.0 + j / 10 for j in range(10)],
                },
            )
        )
        rows[-1]["paper_default"] = i == 0
    return rows


def test_sensitivity_report_uses_optunas_plots_and_says_what_few_trials_cannot_show(tmp_path):
    files = reports.write_report(study("sensitivity"), _sensitivity_rows(8), tmp_path)
    names = {f.name for f in files}
    assert {
        "report.md",
        "sensitivity_pareto.png",
        "sensitivity_slice.png",
        "sensitivity_parallel.png",
        "sensitivity_importance.png",
    } <= names
    assert "sensitivity_contour.png" not in names  # 8 trials over 4 parameters: no interpolated picture
    assert sum(1 for f in files if f.name.startswith("beta_")) == 8  # Figure 4 for every SPROUT trial
    text = (tmp_path / "report.md").read_text()
    assert "No contour: 8 trial(s)" in text and "Caveat: 8 trials" in text
    assert "★ t_00000" in text and "delta" in text  # the paper-default trial marked, short parameter names
    # the importances rank delta (the only parameter robust accuracy depends on here) first
    assert text.index("| delta |") < text.index("| alpha |")


def test_sensitivity_report_draws_a_contour_when_there_are_enough_trials(tmp_path):
    files = reports.write_report(study("sensitivity"), _sensitivity_rows(reports.IMPORTANCE_MIN_TRIALS), tmp_path)
    assert "sensitivity_contour.png" in {f.name for f in files}
    assert "Caveat" not in (tmp_path / "report.md").read_text()


def test_width_report_plots_each_method_against_width(tmp_path):
    rows = [
        row(
            trial=f"t_{i:05d}",
            method=m,
            model="wrn",
            model_args={"width": w},
            searched={"method": m, "model_args.width": w},
        )
        for i, (m, w) in enumerate([(m, w) for m in ("sprout", "pgd_at") for w in (1, 2, 4)])
    ]
    files = reports.write_report(study("width"), rows, tmp_path)
    assert (tmp_path / "width.png").exists() and tmp_path / "report.md" in files
    assert "AutoAttack" in (tmp_path / "report.md").read_text()


def test_scalability_report_ratios_to_natural_with_the_paper_beside(tmp_path):
    runs = [("natural", "fp32", 2.0), ("sprout", "fp32", 2.2), ("pgd_at", "fp32", 22.0), ("natural", "bf16", 1.0),
            ("sprout", "bf16", 2.2)]  # fmt: skip
    rows = [
        row(trial=f"t_{i:05d}", method=m, model="vgg16", metrics={"mean_epoch_time_s": t, "precision": p})
        for i, (m, p, t) in enumerate(runs)
    ]
    reports.write_report(study("scalability"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| vgg16 | fp32 | sprout | 2.200 | 100 | 1.10x | 271.7 | 1.85x |" in text
    assert "| vgg16 | fp32 | pgd_at | 22.000 | 100 | 11.00x | 1327.1 | 9.05x |" in text
    # a ratio compares one precision with itself: bf16 SPROUT against bf16 natural
    assert "| vgg16 | bf16 | sprout | 2.200 | 100 | 2.20x | 271.7 | 1.85x |" in text
    assert (tmp_path / "scalability.png").exists()


def test_ablation_and_compare_reports_put_paper_cells_beside_ours_and_flag_masking(tmp_path):
    rows = [
        row(trial="t_00000", searched={"case": "SPROUT"}, metrics={"masking_flags": ["black_box_beats_white_box"]}),
        row(trial="t_00001", searched={"case": "GA"}),
    ]
    reports.write_report(study("ablation"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "62.64" in text and "12.44" in text and "**FLAGGED**: black_box_beats_white_box" in text
    assert "1 trial(s) have gradient-masking flags" in text
    rows = [
        row(
            trial="t_00000",
            method="pgd_at",
            searched={"case": "pgd_at", "model": "wrn"},
            model="wrn",
            metrics={"transfer_acc": 0.8},
        )
    ]
    reports.write_report(study("compare"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "45.91" in text and "85.84" in text and "82.66" in text  # Tables 2, 3, 5


def test_imagenet_and_init_reports(tmp_path):
    rows = [row(trial="t_00000", method="natural", model="resnet152", metrics={"pgd_targeted_acc_eps0.01": 0.1})]
    reports.write_report(study("imagenet"), rows, tmp_path)
    assert "9.14" in (tmp_path / "report.md").read_text()
    rows = [
        row(stage="sprout", trial=f"t_{i:05d}", searched={"init_checkpoint": c})
        for i, c in enumerate(["stage:pretrain/method=natural", "random"])
    ]
    reports.write_report(study("init"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| natural |" in text and "| random |" in text


@pytest.mark.slow  # starts Ray, 3 trials
def test_init_study_smoke_runs_both_stages_as_one_command(tmp_path):
    """The starting checkpoints come from the first stage of the same command; both stages are
    grids, so every trial of each is certified on the test split. (Which of several trials a
    reference picks: tests/test_study.py.)"""
    sweep("--study", "init", "--smoke-test", "--output-dir", str(tmp_path), cwd=tmp_path, timeout=1200)
    s = json.loads((tmp_path / "summary.json").read_text())
    stages = [t["stage"] for t in s["trials"]]
    assert stages.count("pretrain") == 1 and stages.count("sprout") == 2  # the study's smoke: both kinds of start
    assert all(t["status"] == "completed" and "test/robust_acc" in t["metrics"] for t in s["trials"])
    starts = {t["searched"]["case"]: t["config"]["init_checkpoint"] for t in s["trials"] if t["stage"] == "sprout"}
    assert starts["Random+SPROUT"] is None
    pretrain_ck = {t["config"]["method"]: t["checkpoint"] for t in s["trials"] if t["stage"] == "pretrain"}
    assert starts["AdvTrain+SPROUT"] == str(Path(pretrain_ck["pgd_at"]) / "checkpoint.pt")
    assert all(t["config"]["method_args"]["variant"] == "reference" for t in s["trials"] if t["stage"] == "sprout")
    report = (tmp_path / "report.md").read_text()
    assert "| Random+SPROUT |" in report and "![init](init.png)" in report and (tmp_path / "init.png").is_file()
    assert list((tmp_path / "beta").glob("*.png"))


def test_a_paper_numbers_file_of_the_wrong_shape_is_one_clear_error(tmp_path, monkeypatch):
    from trainables.errors import ConfigError

    (tmp_path / "listed.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "cells_not_a_list.yaml").write_text("cells: {a: 1}\n")
    from orchestrator.study import paper

    monkeypatch.setattr(paper, "PAPER_DIR", tmp_path)
    for name in ("listed", "cells_not_a_list"):
        with pytest.raises(ConfigError, match=f"paper: .*{name}.yaml: expected a mapping with a list of cells"):
            paper.load_paper_numbers(name)


def test_a_trial_takes_every_matching_cell_and_two_cells_that_disagree_are_refused(tmp_path, monkeypatch):
    from orchestrator.study import paper
    from trainables.errors import ConfigError

    numbers = paper.load_paper_numbers("compare")
    natural_wrn = {"config": {"method": "natural", "model": "wrn"}, "searched": {}}
    cell = paper.paper_cell(numbers, natural_wrn)
    assert cell["pgd20_acc"] == 0.0 and cell["inv_rotation_acc"] == 88.21  # Table 2 and the invariance cell
    sprout_wrn = {"config": {"method": "sprout", "model": "wrn"}, "searched": {"case": "sprout-paper"}}
    got = paper.paper_metrics(numbers, sprout_wrn)
    assert got["pgd100x10_acc"] == 0.6432 and got["clean_acc"] == 0.9056  # in our units, fractions
    assert paper.paper_cell(numbers, {"config": {"method": "free_at", "model": "wrn"}, "searched": {}}) == {}
    (tmp_path / "clash.yaml").write_text(
        "cells:\n  - {method: natural, model: wrn, clean_acc: 95.9}\n  - {method: natural, clean_acc: 93.3}\n"
    )
    (tmp_path / "apart.yaml").write_text(
        "headline: clean_acc\ncells:\n  - {method: natural, model: wrn, clean_acc: 95.9}\n"
        "  - {method: natural, model: vgg16, clean_acc: 93.3}\n"
    )
    (tmp_path / "lost.yaml").write_text("headline: pgd20_acc\ncells:\n  - {method: natural, clean_acc: 95.9}\n")
    monkeypatch.setattr(paper, "PAPER_DIR", tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"cells\[0\] and cells\[1\] both describe method=natural, model=wrn but "
        r"disagree on clean_acc \(95.9 vs 93.3\)",
    ):
        paper.load_paper_numbers("clash")
    assert len(paper.load_paper_numbers("apart")["cells"]) == 2  # other models: no clash
    with pytest.raises(ConfigError, match="headline 'pgd20_acc' is a number no cell gives"):
        paper.load_paper_numbers("lost")


def test_every_shipped_paper_file_loads_and_names_a_headline():
    from orchestrator.study import paper

    for f in sorted(paper.PAPER_DIR.glob("*.yaml")):
        data = paper.load_paper_numbers(f.stem)
        assert data["headline"] and data["source"], f.name


def test_the_console_table_puts_the_papers_headline_beside_ours():
    from orchestrator.results.tables import table

    def row(trial_id, method, robust, paper=None):
        r = {
            "trial_id": trial_id,
            "stage": "main",
            "config": {"method": method},
            "searched": {},
            "status": "completed",
            "finalist": True,
            "metrics": {"test/robust_acc": robust, "test/robust_acc_min_n": 100, "test/pgd20_acc": 0.6},
        }
        if paper:
            r["paper"] = paper
        return r

    rows = [row("a", "sprout", 0.55, {"pgd20_acc": 0.6224}), row("b", "free_at", 0.4)]
    text = table(rows, ("pgd20_acc", "Table 2"))
    head, _, a, b = text.splitlines()[:4]
    assert "paper pgd20%" in head and max(len(line) for line in text.splitlines()) <= 120
    col = head.index("paper pgd20%")
    assert a[col:].startswith("62.2") and b[col:].startswith("-")
    assert "paper pgd20%: the paper's number for the same method and model (Table 2)" in " ".join(text.split())
    assert "paper" not in table(rows).splitlines()[0]  # a study without paper numbers: no column


def test_a_report_says_which_setting_it_ran_and_where_it_differs_on_purpose(tmp_path):
    rows = [
        row(trial="t_00000", method="pgd_at", model="vgg16", searched={"case": "pgd_at"}, metrics={"pgd20_acc": 0.5})
    ]
    reports.write_report(study("compare"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "orchestrator/study/paper_settings/compare.yaml" in text
    assert "- `origin` (model=wrn, method=trades): Table 2's WRN TRADES row is TRADES' released WRN-34-10" in text
    assert "![compare-vgg16](compare-vgg16.png)" in text and (tmp_path / "compare-vgg16.png").is_file()


def test_training_cost_report_puts_time_and_robustness_beside_backward_smoothings_table_2(tmp_path):
    def arm(i, case, method, per_epoch, pgd100):
        return row(trial=f"t_{i:05d}", method=method, model="preact_resnet18", searched={"case": case},
                   metrics={"mean_epoch_time_s": per_epoch, "pgd100_acc": pgd100, "clean_acc": 0.8})  # fmt: skip

    rows = [arm(0, "TRADES", "trades", 60.0, 0.5), arm(1, "Backward Smoothing", "backward_smoothing", 20.0, 0.49)]
    for r in rows:
        r["config"]["epochs"] = 100
    reports.write_report(study("backward-smoothing"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| Backward Smoothing | 33.3 | 0.33x | 164 | 0.34x |" in text  # 2,000 s of 6,000 s; 164 of 482 minutes
    assert "| TRADES | 100.0 | 1.00x | 482 | 1.00x |" in text
    assert "52.50" in text and (tmp_path / "training_cost.png").is_file()


def test_a_staged_searchs_plots_show_its_own_trials_on_validation(tmp_path):
    """sensitivity-cifar10 trains a natural starting model first: that stage has no validation
    numbers and is no point of the search, so the plots keep to the Optuna stage's trials."""
    rows = _sensitivity_rows(6)
    for r in rows:
        r["search"] = "Optuna TPE (2 objectives, 2 random start-up trials)"
        r["metrics"].update(
            {"val/clean_acc": r["metrics"]["test/clean_acc"], "val/robust_acc": r["metrics"]["test/robust_acc"]}
        )
        if r["trial_id"] != "t_00000":  # only some are finalists: the others have no test numbers
            r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith("test/")}
    rows.append(row(stage="natural", trial="t_natural", method="natural"))
    rows[-1]["search"] = "grid"
    reports.write_report(study("sensitivity-cifar10"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "6 completed trial(s)" in text and "the plots show the validation numbers" in text
    assert "t_natural" not in text.split("## Trials")[1].split("## All trials")[0]  # the search's own table


def test_paper_numbers_beside_a_digits_run_say_they_compare_nothing(tmp_path):
    from orchestrator.results.tables import table

    r = row(trial="t_00000", method="sprout", model="small_cnn", dataset="digits", metrics={"pgd20_acc": 0.9})
    r["paper"] = {"pgd20_acc": 0.6224}
    assert "not the paper's setting, so the column compares nothing" in " ".join(
        table([r], ("pgd20_acc", "T2")).split()
    )
    reports.write_report(study("compare"), [r], tmp_path)
    assert "*paper* columns compare nothing" in (tmp_path / "report.md").read_text()
