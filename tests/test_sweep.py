"""End to end through local Ray on CPU: the sensitivity smoke study, and DDP over gloo."""
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import sweep

pytestmark = pytest.mark.slow  # every test here starts Ray


@pytest.fixture
def smoke(smoke_sweep):
    """The session's one smoke sweep (conftest.py): these tests only read what it wrote."""
    return smoke_sweep


def test_smoke_sensitivity_writes_summary_and_table(smoke):
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    assert s["study"] == "sensitivity" and len(s["trials"]) == 3
    for t in s["trials"]:
        assert {"trial_id", "config", "metrics", "status", "mlflow_run_id"} <= set(t)
        assert t["status"] == "completed" and t["config"]["method"] == "sprout"
        for k in ("clean_acc", "robust_acc", "pgd20_acc", "autoattack_acc", "epoch_time_s", "images_per_s"):
            assert k in t["metrics"], k
        assert t["metrics"]["masking_flags"] is not None
        # selected on a validation split held out of digits' training split (20 %), screened there
        assert t["config"]["data"]["val_size"] == 0.2 and t["metrics"]["val/n_eval"] == 287
        assert {"val/clean_acc", "val/robust_acc", "val/pgd20_acc"} <= set(t["metrics"])
        assert t["selected_on"] == "validation" and isinstance(t["finalist"], bool)
        assert len(t["ci95"]["robust_acc"]) == 2 and len(t["ci95"]["val/robust_acc"]) == 2
    # the paper's defaults were enqueued as the first Optuna point
    firsts = [t["searched"] for t in s["trials"]]
    assert {"method_args.alpha": 0.01, "method_args.mixup_a": 0.2, "method_args.delta": 0.1,
            "method_args.lr_beta": 0.01} in firsts
    assert (out / "summary.csv").read_text().count("\n") == 4
    # Tune's trial directories are named by the trial id people see, not by Optuna's "a/b" keys
    exp = out / "ray" / "sensitivity-main"
    assert {d.name for d in exp.iterdir() if d.is_dir() and d.name.startswith("trial_")} == \
        {f"trial_{t['trial_id']}" for t in s["trials"]}
    assert "robust%" in p.stdout and "-m mlflow ui --backend-store-uri sqlite:////" in p.stdout


def test_smoke_sensitivity_mlflow_parent_and_children(smoke):
    from mlflow.tracking import MlflowClient

    out, _ = smoke
    s = json.loads((out / "summary.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sensitivity")
    parent = client.get_run(s["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.json", "summary.csv"}
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in s["trials"])
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["method"] == "sprout" and r.data.tags["dataset"] == "digits"
        assert r.data.tags["git_commit"] and "version.torch" in r.data.tags
        assert r.data.params["method_args.variant"] == "paper"
        for k in ("loss", "clean_acc", "robust_acc", "autoattack_acc", "epoch_time_s", "images_per_s"):
            assert k in r.data.metrics, k
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 3  # one per epoch
        assert {"config.json", "eval.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}


def test_smoke_table_is_a_person_readable_summary(smoke):
    """Percentages, the full trial ids of the progress lines, the paper-default trial marked,
    rows sorted by the worst case, a footer with image counts, at most 120 characters wide."""
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    lines = p.stdout[p.stdout.index("trial  "):].splitlines()
    table = lines[:lines.index(next(x for x in lines if x.startswith("wrote ")))]
    assert max(len(x) for x in table) <= 120
    body = table[2:2 + len(s["trials"])]
    ids = [row.split()[0].lstrip("^*") for row in body]
    assert sorted(ids) == sorted(t["trial_id"] for t in s["trials"])
    for t in s["trials"]:
        assert f"trial {t['trial_id']} epoch 1:" in p.stdout  # the same id in the progress lines
        row = body[ids.index(t["trial_id"])]
        assert row.startswith("^") == t["finalist"]  # the finalists, chosen on validation, marked
    default = [t for t in s["trials"] if t["paper_default"]]
    assert len(default) == 1 and any(row.lstrip("^").startswith("*" + default[0]["trial_id"]) for row in body)
    # sorted by what the search selected on: the validation split's worst case, not the test split's
    robust = [t["metrics"]["val/robust_acc"] for t in sorted(s["trials"], key=lambda t: ids.index(t["trial_id"]))]
    assert robust == sorted(robust, reverse=True)
    best = max(s["trials"], key=lambda t: t["metrics"]["val/robust_acc"])
    assert f"{100 * best['metrics']['val/robust_acc']:.1f}±" in body[0]  # percentages with their interval
    assert f"{100 * best['metrics']['robust_acc']:.1f}±" in body[0]
    assert "AutoAttack on 10" in p.stdout and "test images" in p.stdout
    assert "selected on validation (287 images;" in p.stdout


def test_smoke_console_follows_each_trial_through_training_and_evaluation(smoke):
    """Per epoch: the id, the searched values on the first line, loss, monitor accuracies,
    images/s; during the final evaluation, a line per attack with its accuracy and seconds;
    none of Ray's, Tune's or Optuna's own noise."""
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    for t in s["trials"]:
        first = next(x for x in p.stdout.splitlines() if f"trial {t['trial_id']} epoch 1:" in x)
        assert "monitor (val) clean" in first and "img/s" in first and "alpha=" in first and "gamma_beta=" in first
        evals = [x for x in p.stdout.splitlines() if x.startswith(f"[main] trial {t['trial_id']} eval ")]
        names = {x.split(" eval ")[1].split(":")[0].split(" ")[0] for x in evals}
        assert {"clean", "pgd20", "autoattack"} <= names, evals
        assert all(x.endswith("s)") for x in evals if " eval clean" not in x and "skipped" not in x), evals
        screened = [x for x in p.stdout.splitlines() if x.startswith(f"[main] trial {t['trial_id']} val ")]
        assert {"clean", "fgsm", "pgd20"} <= {x.split(" val ")[1].split(":")[0] for x in screened}, screened
    both = p.stdout + p.stderr
    for noise in ("INFO", "Trial status", "[I 20", "Configuration for experiment", "View detailed results",
                  "maximum expected startup concurrency"):
        assert noise not in both, noise


def test_smoke_search_is_model_based_and_says_so(smoke):
    from mlflow.tracking import MlflowClient

    out, p = smoke
    assert "search: Optuna TPE (2 objectives, 2 random start-up trials)" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    parent = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_run(s["mlflow_parent_run_id"])
    assert parent.data.params["sampler.main"].startswith("Optuna TPE")
    assert "Optuna TPE" in (out / "report.md").read_text()


def test_smoke_mlflow_layout_compares_trials_well(smoke):
    from mlflow.tracking import MlflowClient

    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sensitivity")
    assert exp.artifact_location == (out / "mlartifacts").resolve().as_uri()  # the output directory is self-contained
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (out.parent / "mlruns").exists()
    for t in s["trials"]:
        r = client.get_run(t["mlflow_run_id"])
        for setting in ("eps", "n_eval", "autoattack_n", "final"):
            assert setting in r.data.params and setting not in r.data.metrics, setting
        assert "resumed_from_epoch" not in r.data.metrics
        # one series per meaning: the monitor per epoch, the final evaluation once
        assert len(client.get_metric_history(r.info.run_id, "monitor_clean_acc")) == 3
        assert [m.step for m in client.get_metric_history(r.info.run_id, "clean_acc")] == [3]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/robust_acc")] == [3]  # the screening
        assert {"alpha", "mixup_a", "delta", "gamma_beta"} <= set(r.data.params)
        assert r.data.tags["searched_params"] == "alpha,mixup_a,delta,gamma_beta"
        assert r.data.params["precision"] == "fp32"
        assert {"seconds/autoattack", "seconds/pgd20"} <= set(r.data.metrics)  # what each attack cost
        assert Path(r.data.tags["checkpoint"]).is_file()
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "checkpoint.pt" in arts and Path(exp.artifact_location[len("file://"):]).is_dir()


def test_printed_mlflow_command_works_in_a_new_shell(smoke):
    out, p = smoke
    line = next(x for x in p.stdout.splitlines() if x.startswith("open the MLflow UI:"))
    cmd = line.split(":", 1)[1].split()
    assert cmd[0] == sys.executable and cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "5000"]
    # and where the study's runs are (the UI's start page is its GenAI overview)
    after = p.stdout.splitlines()[p.stdout.splitlines().index(line) + 1]
    assert re.fullmatch(r"  then http://127\.0\.0\.1:5000/#/experiments/\d+/runs \(the study's training runs\)", after), after
    v = subprocess.run([cmd[0], "-m", "mlflow", "--version"], capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert v.returncode == 0, v.stderr[-500:]


DDP_STUDY = textwrap.dedent("""
    name: ddp
    description: two natural trials
    base: {method: natural, dataset: digits, epochs: 6, batch_size: BATCH, monitor: {every: 0}}
    search: {algorithm: grid, params: {seed: {values: [0, 1]}}}
    evaluation: {protocol: basic}
    resources: {cpus_per_worker: 0.5}  # both trials at once, also with 2 workers each
""")


def test_two_ddp_workers_agree_with_one_within_noise(tmp_path):
    """Same global batch (32 = 1 x 32 = 2 x 16): DDP over gloo must train as well as one worker."""
    accs = {}
    for workers, batch in ((1, 32), (2, 16)):
        f = tmp_path / f"ddp{workers}.yaml"
        f.write_text(DDP_STUDY.replace("BATCH", str(batch)))
        out = tmp_path / f"out{workers}"
        sweep("--config", str(f), "--num-workers", str(workers), "--output-dir", str(out), cwd=tmp_path)
        s = json.loads((out / "summary.json").read_text())
        assert [t["status"] for t in s["trials"]] == ["completed", "completed"]
        accs[workers] = sorted(t["metrics"]["clean_acc"] for t in s["trials"])
        if workers == 2:
            assert all(t["metrics"]["images_per_s"] > 0 for t in s["trials"])
    for one, two in zip(accs[1], accs[2]):
        assert two > 0.85 and abs(one - two) < 0.05, accs


ASHA_STUDY = textwrap.dedent("""
    name: asha
    base: {method: sprout, dataset: digits, epochs: 4, monitor: {n: 64, pgd_steps: 3}}
    search:
      algorithm: optuna
      num_samples: 6
      metric: robust_acc
      mode: max
      params:
        method_args.delta: {type: float, low: 0.0, high: 0.3}
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    evaluation: {protocol: basic}
    resources: {cpus_per_worker: 0.5}  # 4 trials at once on 2 CPUs: trial start-up overlaps
""")


def test_asha_stops_trials_early_and_later_trials_still_run(tmp_path):
    """Early-stopped trials must release their worker groups (the dashboard must run), or
    later trials wait forever: the timeout below catches that hang."""
    from mlflow.tracking import MlflowClient

    f = tmp_path / "asha.yaml"
    f.write_text(ASHA_STUDY)
    out = tmp_path / "out"
    sweep("--config", str(f), "--output-dir", str(out), cwd=tmp_path, timeout=600)
    trials = json.loads((out / "summary.json").read_text())["trials"]
    statuses = [t["status"] for t in trials]
    assert len(trials) == 6 and "stopped" in statuses and "completed" in statuses
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = {r.info.run_id: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    for t in trials:
        r = runs[t["mlflow_run_id"]]
        assert r.info.status == ("FINISHED" if t["status"] == "completed" else "KILLED")
        assert r.data.tags["trial_status"] == t["status"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
