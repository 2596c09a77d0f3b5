"""End to end through local Ray on CPU: the sensitivity smoke study, and DDP over gloo."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"


def sweep(*args, cwd, timeout=900):
    p = subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("sens")
    p = sweep("--smoke-test", "--output-dir", str(out), cwd=out)
    return out, p


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
    # the paper's defaults were enqueued as the first Optuna point
    firsts = [t["searched"] for t in s["trials"]]
    assert {"method_args.alpha": 0.01, "method_args.mixup_a": 0.2, "method_args.delta": 0.1,
            "method_args.lr_beta": 0.01} in firsts
    assert (out / "summary.csv").read_text().count("\n") == 4
    assert "robust_min" in p.stdout and "mlflow ui --backend-store-uri sqlite:////" in p.stdout


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


DDP_STUDY = textwrap.dedent("""
    name: ddp
    description: two natural trials
    base: {method: natural, dataset: digits, epochs: 6, batch_size: BATCH, monitor: {every: 0}}
    search: {algorithm: grid, params: {seed: {values: [0, 1]}}}
    evaluation: {protocol: basic}
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
