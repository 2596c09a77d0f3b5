"""Failures: a killed worker, a killed driver, a diverging trial; determinism; disk use."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import wait_for

pytestmark = pytest.mark.slow  # every test here starts Ray

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"


def write_study(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def start(args, cwd, log):
    return subprocess.Popen([sys.executable, str(SWEEP), *args], cwd=cwd, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def mlflow_runs(out: Path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exps = c.search_experiments()
    return [r for e in exps for r in c.search_runs([e.experiment_id])]


def test_killed_worker_restarts_from_its_last_checkpoint(tmp_path):
    study = write_study(tmp_path / "s.yaml", """
        name: wk
        base: {method: pgd_at, dataset: digits, epochs: 8, monitor: {every: 0}}
        evaluation: {protocol: basic}
        resources: {max_failures: 2}
    """)
    log = tmp_path / "log.txt"
    proc = start(["--config", str(study), "--output-dir", str(tmp_path / "out")], tmp_path, log)
    try:
        wait_for(log, "epoch 3:", proc)
        workers = [p for p in psutil.process_iter(["cmdline"]) if any("RayTrainWorker" in c for c in (p.info["cmdline"] or []))]
        assert workers, "no Ray Train worker process found"
        for w in workers:
            w.send_signal(signal.SIGKILL)  # mid-epoch 4
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (t,) = json.loads((tmp_path / "out" / "summary.json").read_text())["trials"]
    m = t["metrics"]
    assert t["status"] == "completed" and m["epoch"] == 8
    assert m["resumed_from_epoch"] >= 2  # restarted from a checkpoint: at most one epoch lost
    assert "pgd20_acc" in m and m["clean_acc"] > 0.5


STUDY3 = """
    name: dk
    base: {method: natural, dataset: digits, epochs: 4, monitor: {every: 0}}
    search: {algorithm: grid, params: {seed: {values: [0, 1, 2]}}}
    evaluation: {protocol: basic}
    resources: {max_concurrent_trials: 1}
"""


def test_killed_driver_resumes_without_rerunning_completed_trials(tmp_path):
    study = write_study(tmp_path / "s.yaml", STUDY3)
    out = tmp_path / "out"
    log = tmp_path / "log1.txt"
    proc = start(["--config", str(study), "--output-dir", str(out)], tmp_path, log)
    wait_for(log, "2/3 trial", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, no clean-up
    proc.wait()
    done_first = [line.split()[3] for line in log.read_text().splitlines() if " completed:" in line]
    assert len(done_first) >= 2
    assert not (out / "summary.json").exists()
    # a plain relaunch into the same directory is refused: it would mix two launches
    p = subprocess.run([sys.executable, str(SWEEP), "--config", str(study), "--output-dir", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "pass --resume" in p.stderr
    log2 = tmp_path / "log2.txt"
    proc2 = start(["--config", str(study), "--output-dir", str(out), "--resume"], tmp_path, log2)
    assert proc2.wait(timeout=900) == 0, log2.read_text()[-3000:]
    rerun = log2.read_text()
    for trial_id in done_first:
        assert f"trial {trial_id} epoch" not in rerun, f"{trial_id} was re-run"
    s = json.loads((out / "summary.json").read_text())
    ids = [t["trial_id"] for t in s["trials"]]
    assert len(ids) == 3 == len(set(ids)) and set(done_first) <= set(ids)
    assert all(t["status"] == "completed" for t in s["trials"])
    runs = mlflow_runs(out)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)


DETDIV = """
    name: detdiv
    base: {method: sprout, dataset: digits, epochs: 3, monitor: {n: 64}}
    search: {algorithm: grid, params: {optim.lr: {values: [0.1, 0.1, 1.0e+20]}}}
    evaluation: {protocol: basic}
"""


@pytest.fixture(scope="module")
def detdiv(tmp_path_factory):
    """One sweep, --seed 7, three SPROUT trials: two identical (the same seed must give the same
    numbers, through two separate trial processes) and one whose lr makes it diverge."""
    tmp_path = tmp_path_factory.mktemp("detdiv")
    study = write_study(tmp_path / "s.yaml", DETDIV)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(SWEEP), "--config", str(study), "--output-dir", str(out), "--seed", "7"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())["trials"]


def test_diverging_trial_is_recorded_and_the_study_goes_on(detdiv):
    out, trials = detdiv
    by_lr = {}
    for t in trials:
        by_lr.setdefault(t["searched"]["optim.lr"], []).append(t)
    assert [t["status"] for t in by_lr[0.1]] == ["completed", "completed"]
    (bad,) = by_lr[1e20]
    assert bad["status"] == "diverged"
    runs = {r.info.run_id: r for r in mlflow_runs(out)}
    assert runs[bad["mlflow_run_id"]].info.status == "FAILED"
    assert runs[bad["mlflow_run_id"]].data.tags["trial_status"] == "diverged"
    assert all(runs[t["mlflow_run_id"]].info.status == "FINISHED" for t in by_lr[0.1])


def test_same_seed_same_metrics_through_the_orchestrator(detdiv):
    out, trials = detdiv
    same = [t for t in trials if t["searched"]["optim.lr"] == 0.1]
    assert len(same) == 2 and same[0]["trial_id"] != same[1]["trial_id"]
    results = [{k: v for k, v in t["metrics"].items()
                if not ("time" in k or "per_s" in k or k.startswith("seconds/") or k in ("checkpoint_path",))}
               for t in same]
    assert results[0] == results[1]
    # disk: of 3 epoch checkpoints only the last keep_checkpoints (2) remain, per trial
    for t in same:
        ckpts = [p for p in (out / "ray" / f"train-{t['trial_id']}").glob("checkpoint_*") if p.is_dir()]
        assert len(ckpts) == 2, ckpts


STUDY_INT = """
    name: ctrlc
    base: {method: natural, dataset: digits, epochs: 6}
    search: {algorithm: optuna, sampler: random, num_samples: 2, params: {seed: {type: int, low: 0, high: 1000}}}
    evaluation: {protocol: basic}
    resources: {max_concurrent_trials: 1}
"""

PAYLOAD = "import os\nos.system('touch {marker}')\n"


def plant_pickles(directory: Path, marker: Path) -> int:
    """Replace every pickle Tune wrote (tuner.pkl, searcher state) with one that runs code."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, (PAYLOAD.format(marker=marker),))

    n = 0
    for f in directory.rglob("*.pkl"):
        f.write_bytes(pickle.dumps(Evil()))
        n += 1
    return n


def test_ctrl_c_is_a_failure_that_leaves_the_study_resumable(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) mid-training: exit 130, no summary,
    the MLflow parent and the running child KILLED. --resume then finishes every trial once,
    the interrupted one from its checkpoint (the one before the latest, which is made unusable),
    and loads none of Tune's pickles (replaced by ones that would run code)."""
    from trainables.checkpoint import load_checkpoint

    study = write_study(tmp_path / "s.yaml", STUDY_INT)
    out = tmp_path / "out"
    log = tmp_path / "log1.txt"
    proc = start(["--config", str(study), "--output-dir", str(out)], tmp_path, log)
    try:
        wait_for(log, "epoch 2:", proc)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "interrupted (SIGINT)" in text and "--resume" in text and "Traceback" not in text
    assert not (out / "summary.json").exists()
    runs = mlflow_runs(out)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parent] == ["KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # Ray's session files went to the output directory, not /tmp/ray; the directory is private
    assert list((out / "ray-tmp").glob("session_*"))
    assert out.stat().st_mode & 0o077 == 0
    # the interrupted trial's latest checkpoint becomes unusable: it resumes from the one before
    (train_run,) = [d for d in (out / "ray").glob("train-*") if d.is_dir()]
    ckpts = sorted(d for d in train_run.glob("checkpoint_*") if d.is_dir())
    assert len(ckpts) >= 2
    previous = load_checkpoint(ckpts[-2] / "checkpoint.pt")["epoch"]
    (ckpts[-1] / "checkpoint.pt").write_bytes((ckpts[-1] / "checkpoint.pt").read_bytes()[:500])
    marker = tmp_path / "PWNED"
    assert plant_pickles(out / "ray", marker) >= 1
    log2 = tmp_path / "log2.txt"
    proc2 = start(["--config", str(study), "--output-dir", str(out), "--resume"], tmp_path, log2)
    assert proc2.wait(timeout=900) == 0, log2.read_text()[-3000:]
    assert not marker.exists(), "--resume loaded a pickle from the storage path"
    s = json.loads((out / "summary.json").read_text())
    assert sorted(t["status"] for t in s["trials"]) == ["completed", "completed"]
    assert len({t["trial_id"] for t in s["trials"]}) == 2
    (resumed,) = [t for t in s["trials"] if t.get("resumed_from_trial")]
    assert resumed["metrics"]["resumed_from_epoch"] == previous
    assert f"train-{resumed['resumed_from_trial']}" == train_run.name
    children = [r for r in mlflow_runs(out) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    # the resumed trial's epochs went on in its first MLflow run
    (first,) = [r for r in children if r.data.tags["trial_id"] == resumed["resumed_from_trial"]]
    assert first.info.run_id == resumed["mlflow_run_id"]
