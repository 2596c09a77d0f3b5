"""The scale path on Ray's own fake autoscaling cluster (real raylets, fake GPUs, one machine).

A head node with the driver resource and no GPU, and a worker node type with ``GPU: 1`` and
``min_workers: 0``: the cluster starts with zero GPUs, exactly like ``cluster/gpu.yaml``. The
sweep runs as ``ray submit`` runs it (``sweep.py`` copied alone into an empty directory, with
``RAY_ADDRESS`` set); the trials must make the autoscaler add GPU nodes. On those nodes CUDA is
absent, so the workers fall back to CPU and gloo: the code path of a real cluster otherwise.

The cluster keeps its session files in a temporary directory of its own; at the end every
process that names it (and everything they started) is killed: a `ray stop` of this cluster
only, so other tests' Rays run on beside it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, free_port, kill_tree, mlflow_client, processes_mentioning, ray_train_workers, wait_for

pytestmark = pytest.mark.slow  # a simulated Ray cluster

BIN = Path(sys.executable).parent
HEAD_RESOURCES = {"CPU": 1, "sweep_driver": 10000}
CLUSTER = {
    "cluster_name": "fake",
    "max_workers": 3,
    "idle_timeout_minutes": 1,
    "upscaling_speed": 1.0,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "available_node_types": {
        "ray.head.default": {"resources": HEAD_RESOURCES, "node_config": {}, "max_workers": 0},
        "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 3},
    },
    "head_node_type": "ray.head.default",
    "auth": {},
    "docker": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}
ADDRESS = "127.0.0.1:6379"  # the fake provider's nodes join the GCS on the default port


TOKEN: dict[str, str] = {}  # the simulated cluster's token file, written by the cluster fixture
CLUSTER_TEMP: dict[str, str] = {}  # its temp dir: every process of the cluster names it


def ray_env(**extra) -> dict:
    """This environment without RAY_* variables, and Ray's token authentication on for every
    process of the simulated cluster, as the cluster files start it. The token is a file of the
    test's own (RAY_AUTH_TOKEN_PATH): a fresh machine has no ~/.ray/auth_token, and `ray start`
    with token authentication refuses to start without one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", **TOKEN, **extra})
    return env


def nodes() -> list[dict]:
    """Every node the GCS has seen (alive or dead), read from a separate process.

    The answer travels through a file, not stdout: the autoscaler's own lines ("(autoscaler +0s)
    Removing 1 nodes ...") reach a driver's stdout whenever they happen, before or after ours."""
    with tempfile.TemporaryDirectory() as d:
        answer = Path(d) / "nodes.json"
        code = (
            f"import json, ray, sys; ray.init(address={ADDRESS!r}, logging_level='ERROR'); "
            "open(sys.argv[1], 'w').write(json.dumps(ray.nodes()))"
        )
        p = subprocess.run(
            [sys.executable, "-c", code, str(answer)], capture_output=True, text=True, env=ray_env(), timeout=120
        )
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(answer.read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.fail("the ray CLI is not installed beside this Python")
    import secrets

    d = tmp_path_factory.mktemp("fake_cluster")
    token = d / "auth_token"
    token.write_text(secrets.token_hex(32))  # as `ray get-auth-token --generate` makes one
    token.chmod(0o600)
    TOKEN["RAY_AUTH_TOKEN_PATH"] = str(token)
    config = d / "cluster.json"
    config.write_text(json.dumps(CLUSTER))
    env = ray_env(
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        # a node whose raylet dies is declared dead within seconds, not half a minute
        RAY_health_check_period_ms="1000",
        RAY_health_check_failure_threshold="3",
    )
    temp = tempfile.mkdtemp(prefix="fk", dir="/tmp")  # short: Ray's socket paths live under it
    CLUSTER_TEMP["dir"] = temp
    p = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--autoscaling-config={config}",
            "--num-cpus=1",
            "--num-gpus=0",
            f"--resources={json.dumps({'sweep_driver': 10000})}",
            f"--temp-dir={temp}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            # a port of its own: a sweep's private Ray in the other test process may hold the
            # default 8265, and `ray start --head` fails on a taken port instead of moving on
            f"--dashboard-port={free_port()}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=d,
        timeout=300,
    )
    try:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
        yield d, config
    finally:
        kill_tree(processes_mentioning(temp))
        shutil.rmtree(temp, ignore_errors=True)


def submit(d: Path, args: list[str], log: Path) -> subprocess.Popen:
    """What `ray submit` does: the script alone, in a directory of its own, RAY_ADDRESS set."""
    job = d / f"job-{time.time_ns()}"
    job.mkdir()
    shutil.copy(ROOT / "orchestrator" / "sweep.py", job / "sweep.py")
    return subprocess.Popen(
        [sys.executable, "sweep.py", *args],
        cwd=job,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=ray_env(RAY_ADDRESS=ADDRESS),
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-4000:]


def check_mlflow(out: Path, summary: dict) -> dict:
    client = mlflow_client(out)
    parent = client.get_run(summary["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.json", "summary.csv"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in summary["trials"])
    finalists = {t["mlflow_run_id"] for t in summary["trials"] if t["finalist"]}
    assert finalists
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags["trial_status"] == "completed"
        assert "loss" in r.data.metrics and "config.json" in {a.path for a in client.list_artifacts(r.info.run_id)}
        if r.info.run_id in finalists:  # certified on the test split
            assert {"test/clean_acc", "test/robust_acc"} <= set(r.data.metrics)
    return {r.info.run_id: r for r in children}


def test_a_study_on_zero_gpus_scales_up_and_completes(cluster, tmp_path):
    d, config = cluster
    before = [n for n in nodes() if n["Alive"]]
    assert len(before) == 1 and not before[0]["Resources"].get("GPU"), "the cluster must start with no GPU node"
    # token authentication is on: a client without it is turned away
    code = f"import ray; ray.init(address={ADDRESS!r}, logging_level='ERROR')"
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=ray_env(RAY_AUTH_MODE="disabled")
    )
    assert p.returncode != 0 and "InvalidAuthToken" in p.stderr + p.stdout, p.stderr[-2000:]
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    proc = submit(
        d,
        [
            "--smoke-test",
            "--num-samples",
            "2",
            "--gpus-per-worker",
            "1",
            "--cluster-config",
            str(config),
            "--output-dir",
            str(out),
            "--resource-timeout",
            "300",
        ],
        log,
    )
    finish(proc, log)
    text = log.read_text()
    assert "up to 3 at once" in text  # from what the config lets the cluster grow to, not from 0 GPUs now
    # the nodes the autoscaler added (GPU nodes: the only worker type); one that it has taken down
    # again after its idle minute is listed dead, without its resources
    added = [n for n in nodes() if n["NodeID"] != before[0]["NodeID"]]
    assert added, "the autoscaler added no GPU node"
    assert all(n["Resources"].get("GPU") == 1 for n in added if n["Alive"]), added
    gpu_ids = {n["NodeID"] for n in added}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    for t in summary["trials"]:
        assert t["status"] == "completed" and t["metrics"]["epoch"] == 3
        assert t["placement"]["device"] == "cpu (GPU advertised, CUDA unavailable)"
        assert t["placement"]["node_id"] in gpu_ids
    check_mlflow(out, summary)
    # certification: each finalist's shards are Ray tasks with a worker's resources (a GPU), and
    # one finalist's shards ran on two GPU nodes at the same time
    overlapping = False
    for t in summary["trials"]:
        shards = t["metrics"].get("test/shard_placement") or []
        assert all(p["node_id"] in gpu_ids for p in shards), shards
        for i, a in enumerate(shards):
            for b in shards[i + 1 :]:
                overlapping |= a["node_id"] != b["node_id"] and a["began"] < b["ended"] and b["began"] < a["ended"]
    assert overlapping, [t["metrics"].get("test/shard_placement") for t in summary["trials"]]


NODE_FAILURE_STUDY = textwrap.dedent("""
    name: nodefail
    base: {method: natural, dataset: digits, epochs: 6, monitor: {every: 0}}
    evaluation: {protocol: basic}
    resources: {gpus_per_worker: 1, max_failures: 2}
""")


def test_a_lost_node_costs_at_most_one_epoch(cluster, tmp_path):
    d, config = cluster
    study = tmp_path / "nodefail.yaml"
    study.write_text(NODE_FAILURE_STUDY)
    out = tmp_path / "out"
    log = tmp_path / "log.txt"
    proc = submit(d, ["--config", str(study), "--cluster-config", str(config), "--output-dir", str(out)], log)
    try:
        wait_for(log, "epoch 2:", proc)
        workers = ray_train_workers(processes_mentioning(CLUSTER_TEMP["dir"]))
        assert len(workers) == 1, workers
        raylet = workers[0].parent()
        assert "raylet" in raylet.name(), raylet.cmdline()
        killed = raylet.environ().get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
        assert killed, "the worker does not run on a node of the fake provider"
        raylet.send_signal(signal.SIGKILL)  # the whole node is gone: its raylet and (with it) its workers
        for w in workers:
            try:
                w.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finish(proc, log)
    summary = json.loads((out / "summary.json").read_text())
    (t,) = summary["trials"]
    m = t["metrics"]
    assert t["status"] == "completed" and m["epoch"] == 6
    assert m["resumed_from_epoch"] >= 2, m  # resumed from its last checkpoint: at most one epoch lost
    assert t["placement"]["node_id"] != killed  # on another node
    assert "test/pgd20_acc" in m and m["test/clean_acc"] > 0.5
    runs = check_mlflow(out, summary)
    (run,) = runs.values()
    epochs = [int(x.step) for x in mlflow_client(out).get_metric_history(run.info.run_id, "loss")]
    assert set(range(1, 7)) <= set(epochs)  # every epoch recorded, the re-run one included
