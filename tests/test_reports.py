"""Each study's report step, on stored (synthetic) results, and one multi-stage study end to end."""
import json
import subprocess
import sys
from pathlib import Path


from orchestrator import reports
from orchestrator.study import load_raw, parse

ROOT = Path(__file__).resolve().parents[1]


def row(stage="main", trial="t_00000", status="completed", searched=None, **cfg_and_metrics):
    metrics = cfg_and_metrics.pop("metrics", {})
    cfg = {"method": "sprout", "model": "vgg16", "dataset": "cifar10", "model_args": {}, **cfg_and_metrics}
    base = {"clean_acc": 0.9, "robust_acc": 0.5, "pgd20_acc": 0.6, "autoattack_acc": 0.5, "autoattack_n": 100,
            "n_eval": 100, "masking_flags": [], "epoch_time_s": 1.0, "mean_epoch_time_s": 1.0, "images_per_s": 100.0}
    return {"trial_id": trial, "stage": stage, "study": "s", "config": cfg, "searched": searched or {},
            "metrics": {**base, **metrics}, "status": status, "mlflow_run_id": "r", "checkpoint": None}


def study(name):
    raw, src = load_raw(name=name)
    return parse(raw, src)


def test_sensitivity_report_heatmap_pareto_importances(tmp_path):
    import random

    rnd = random.Random(0)
    rows = []
    for i in range(8):
        s = {"method_args.alpha": rnd.uniform(0.001, 0.5), "method_args.mixup_a": rnd.uniform(0.05, 2),
             "method_args.delta": rnd.uniform(0, 0.3), "method_args.lr_beta": rnd.uniform(0.001, 0.5)}
        rows.append(row(trial=f"t_{i:05d}", searched=s, metrics={"robust_acc": 0.3 + s["method_args.delta"],
                                                                   "clean_acc": 0.95 - s["method_args.delta"],
                                                                   "beta": [1.0 + j / 10 for j in range(10)]}))
    files = reports.write_report(study("sensitivity"), rows, tmp_path)
    names = {f.name for f in files}
    assert {"report.md", "sensitivity_heatmap.png", "sensitivity_pareto.png", "sensitivity_importance.png"} <= names
    assert sum(1 for f in files if f.name.startswith("beta_")) == 8  # Figure 4 for every SPROUT trial
    text = (tmp_path / "report.md").read_text()
    assert "Pareto front" in text and "method_args.delta" in text


def test_width_report_plots_each_method_against_width(tmp_path):
    rows = [row(trial=f"t_{i:05d}", method=m, model="wrn", model_args={"width": w}, searched={"method": m, "model_args.width": w})
            for i, (m, w) in enumerate([(m, w) for m in ("sprout", "pgd_at") for w in (1, 2, 4)])]
    files = reports.write_report(study("width"), rows, tmp_path)
    assert (tmp_path / "width.png").exists() and tmp_path / "report.md" in files
    assert "AutoAttack" in (tmp_path / "report.md").read_text()


def test_scalability_report_ratios_to_natural_with_the_paper_beside(tmp_path):
    rows = [row(trial=f"t_{i:05d}", method=m, model="vgg16", metrics={"mean_epoch_time_s": t})
            for i, (m, t) in enumerate([("natural", 2.0), ("sprout", 2.2), ("pgd_at", 22.0)])]
    reports.write_report(study("scalability"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| vgg16 | sprout | 2.200 | 100 | 1.10x | 271.7 | 1.85x |" in text
    assert "| vgg16 | pgd_at | 22.000 | 100 | 11.00x | 1327.1 | 9.05x |" in text
    assert (tmp_path / "scalability.png").exists()


def test_ablation_and_compare_reports_put_paper_cells_beside_ours_and_flag_masking(tmp_path):
    rows = [row(trial="t_00000", searched={"case": "SPROUT"}, metrics={"masking_flags": ["black_box_beats_white_box"]}),
            row(trial="t_00001", searched={"case": "GA"})]
    reports.write_report(study("ablation"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "62.64" in text and "12.44" in text and "**FLAGGED**: black_box_beats_white_box" in text
    assert "1 trial(s) have gradient-masking flags" in text
    rows = [row(trial="t_00000", method="pgd_at", searched={"case": "pgd_at", "model": "wrn"}, model="wrn",
                metrics={"transfer_acc": 0.8})]
    reports.write_report(study("compare"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "45.91" in text and "85.84" in text and "82.66" in text  # Tables 2, 3, 5


def test_imagenet_and_init_reports(tmp_path):
    rows = [row(trial="t_00000", method="natural", model="resnet152", metrics={"pgd_targeted_acc_eps0.01": 0.1})]
    reports.write_report(study("imagenet"), rows, tmp_path)
    assert "9.14" in (tmp_path / "report.md").read_text()
    rows = [row(stage="sprout", trial=f"t_{i:05d}", searched={"init_checkpoint": c})
            for i, c in enumerate(["stage:pretrain/method=natural", "random"])]
    reports.write_report(study("init"), rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| natural |" in text and "| random |" in text


def test_init_study_smoke_runs_both_stages_as_one_command(tmp_path):
    """The starting checkpoints come from the first stage of the same command."""
    p = subprocess.run([sys.executable, str(ROOT / "orchestrator" / "sweep.py"), "--study", "init", "--smoke-test",
                        "--output-dir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    stages = [t["stage"] for t in s["trials"]]
    assert stages.count("pretrain") == 3 and stages.count("sprout") == 4
    assert all(t["status"] == "completed" for t in s["trials"])
    starts = {t["searched"]["init_checkpoint"]: t["config"]["init_checkpoint"] for t in s["trials"] if t["stage"] == "sprout"}
    assert starts["random"] is None
    pretrain_ck = {t["config"]["method"]: t["checkpoint"] for t in s["trials"] if t["stage"] == "pretrain"}
    assert starts["stage:pretrain/method=pgd_at"] == str(Path(pretrain_ck["pgd_at"]) / "checkpoint.pt")
    assert (tmp_path / "report.md").exists() and list((tmp_path / "beta").glob("*.png"))
