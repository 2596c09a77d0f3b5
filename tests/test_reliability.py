"""Failures: a killed worker, a killed driver, a diverging trial; determinism; disk use."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import SWEEP, mlflow_client, ray_train_workers, sweep, wait_for

pytestmark = pytest.mark.slow  # every test here starts Ray


def write_study(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def start(args, cwd, log):
    return subprocess.Popen(
        [sys.executable, str(SWEEP), *args],
        cwd=cwd,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def mlflow_runs(out: Path):
    c = mlflow_client(out)
    exps = c.search_experiments()
    return [r for e in exps for r in c.search_runs([e.experiment_id])]


DDP_BASE = {"method": "natural", "dataset": "digits", "epochs": 6, "monitor": {"every": 0}}
DDP_STUDY = f"""
    name: ddp
    base: {json.dumps({**DDP_BASE, "batch_size": 16})}
    evaluation: {{protocol: basic}}
    resources: {{max_failures: 2}}
"""


def one_worker_reference() -> float:
    """The same training as one process with the whole global batch (32), no Ray: its test clean
    accuracy under the protocol the sweep certifies with (basic), from a model in eval mode."""
    import torch

    from trainables.config import resolve
    from trainables.evaluation import evaluate, get_protocol
    from trainables.loop import build, fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Train worker with cpus_per_worker 1
    try:
        comp = build(resolve({**DDP_BASE, "batch_size": 32}))
        fit(comp)
        return evaluate(comp.net.eval(), comp.bundle, get_protocol("basic"), eps=comp.cfg.eps, seed=0)["clean_acc"]
    finally:
        torch.set_num_threads(threads)


def test_a_killed_ddp_worker_restarts_its_group_from_the_last_checkpoint_and_trains_as_one_worker(tmp_path):
    """Same global batch (32 = 1 x 32 = 2 x 16): DDP over gloo must train as well as one worker,
    also when one of its two workers is killed mid-training (at epoch 4 of 6): the worker group
    restarts from its last checkpoint, losing at most the epoch in flight. The one-worker
    reference trains in this process (one worker through Ray is what every other sweep test runs)."""
    study = write_study(tmp_path / "ddp.yaml", DDP_STUDY)
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(["--config", str(study), "--num-workers", "2", "--output-dir", str(out)], tmp_path, log)
    try:
        wait_for(log, "epoch 3:", proc)
        ranks = ray_train_workers([proc.pid])  # this sweep's own (its private Ray is under it)
        assert len(ranks) == 2, ranks
        ranks[-1].send_signal(signal.SIGKILL)  # one rank, mid-epoch 4: the other waits in gloo
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (two,) = json.loads((out / "summary.json").read_text())["trials"]
    assert two["status"] == "completed" and two["metrics"]["epoch"] == 6
    assert two["config"]["batch_size"] == 16  # per worker: 2 x 16
    assert "test/pgd20_acc" in two["metrics"]  # a one-trial grid: certified
    assert (
        two["metrics"]["resumed_from_epoch"] >= 2 and two["metrics"]["images_per_s"] > 0
    )  # restarted from a checkpoint
    one_acc, two_acc = one_worker_reference(), two["metrics"]["test/clean_acc"]
    assert two_acc > 0.85 and abs(one_acc - two_acc) < 0.05, (one_acc, two_acc)


STUDY2 = """
    name: dk
    base: {method: natural, dataset: digits, epochs: 4, monitor: {every: 0}}
    search: {algorithm: grid, params: {seed: {values: [0, 1]}}}
    evaluation: {protocol: basic, overrides: {batch_size: 30}}
    certify: {shard_size: 30}
    resources: {max_concurrent_trials: 1}
"""


def test_killed_driver_resumes_without_rerunning_completed_trials_or_certified_shards(tmp_path):
    """The driver and its Ray are killed (SIGKILL) while the finalists are being certified: the
    relaunch refuses to mix launches, --resume runs no trial again and only the shards that had
    no result, and the union of old and new shards equals one evaluation of each finalist."""
    from trainables.evaluation import evaluate, get_protocol
    from trainables.loading import load_model_from_checkpoint

    study = write_study(tmp_path / "s.yaml", STUDY2)
    out = tmp_path / "out"
    log = tmp_path / "log1.txt"
    proc = start(["--config", str(study), "--output-dir", str(out)], tmp_path, log)
    wait_for(log, "[main] certify: 1/24 shards", proc)  # 2 finalists x 360 test images / 30
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, no clean-up
    proc.wait()
    done_first = [
        line.split()[3] for line in log.read_text().splitlines() if " completed" in line and "/2 trial" in line
    ]
    assert len(done_first) == 2
    assert not (out / "summary.json").exists()
    # a plain relaunch into the same directory is refused: it would mix two launches
    p = sweep("--config", str(study), "--output-dir", str(out), cwd=tmp_path, expect=2)
    assert "pass --resume" in p.stderr
    log2 = tmp_path / "log2.txt"
    proc2 = start(["--config", str(study), "--output-dir", str(out), "--resume"], tmp_path, log2)
    assert proc2.wait(timeout=900) == 0, log2.read_text()[-3000:]
    rerun = log2.read_text()
    for trial_id in done_first:
        assert f"trial {trial_id} epoch" not in rerun, f"{trial_id} was re-run"
    earlier = int(rerun.split("certify: ")[1].split(" of 24 shards finished in an earlier launch")[0])
    assert 1 <= earlier < 24 and f"({24 - earlier} shard task(s) submitted)" in rerun, rerun[-3000:]
    s = json.loads((out / "summary.json").read_text())
    ids = [t["trial_id"] for t in s["trials"]]
    assert len(ids) == 2 == len(set(ids)) and set(done_first) == set(ids)
    assert all(t["status"] == "completed" and t["finalist"] for t in s["trials"])
    for t in s["trials"]:  # shards of two launches, on batch boundaries: exactly one evaluation
        model, cfg, bundle = load_model_from_checkpoint(str(Path(t["checkpoint"]) / "checkpoint.pt"))
        whole = evaluate(model, bundle, get_protocol("basic", {"batch_size": 30}), eps=cfg.eps, seed=0)
        assert t["metrics"]["test/shards"] == 12 and t["metrics"]["test/n_eval"] == 360
        for k in ("clean_acc", "pgd20_acc", "robust_acc_min"):
            assert t["metrics"][f"test/{k}"] == whole[k], k
    runs = mlflow_runs(out)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == s["mlflow_parent_run_id"]]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)


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
    sweep("--config", str(study), "--output-dir", str(out), "--seed", "7", cwd=tmp_path)
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
    results = [
        {
            k: v
            for k, v in t["metrics"].items()
            if not (
                "time" in k
                or "per_s" in k
                or "seconds/" in k
                or "placement" in k
                or k == "checkpoint_path"
                or k.startswith(("system/", "mean_cpu", "mean_gpu", "mean_loader"))
            )  # how busy the machine was
        }
        for t in same
    ]
    assert "test/robust_acc" in results[0]  # certified (a grid): the test numbers are compared too
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
    # the search's Optuna study is in the output directory's database: its running trial is there
    import optuna

    storage = f"sqlite:///{out / 'optuna.db'}"
    before = optuna.load_study(study_name="ctrlc-main", storage=storage).trials
    assert [t.state.name for t in before] == ["RUNNING"]
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
    children = [r for r in mlflow_runs(out) if r.data.tags.get("mlflow.parentRunId") == s["mlflow_parent_run_id"]]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)  # the trials' runs
    # --resume continued the same Optuna study: the interrupted trial FAIL, then the two that ran
    after = optuna.load_study(study_name="ctrlc-main", storage=storage).trials
    assert [t.state.name for t in after] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert after[1].params == before[0].params  # the interrupted point, enqueued again
    # the resumed trial's epochs went on in its first MLflow run
    (first,) = [r for r in children if r.data.tags["trial_id"] == resumed["resumed_from_trial"]]
    assert first.info.run_id == resumed["mlflow_run_id"]
