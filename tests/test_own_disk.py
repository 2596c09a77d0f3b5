"""A Ray node with a disk of its own: a worker node started in its own mount namespace (private
/tmp, /dev/shm and HOME, at 127.0.0.2 so that drivers do not attach to it) joins a head that
runs no training. A study whose storage is an S3 bucket (moto on loopback) runs its trials and
certification shards on that node and passes, although the node cannot see the head's output
directory; a study with a head-local storage path is refused before any trial runs."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, SWEEP, free_port, kill_tree, processes_mentioning
from test_storage_s3 import keys, s3  # noqa: F401  (the S3 server fixture)

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture
def own_disk_cluster(s3, monkeypatch):  # noqa: F811
    """(GCS address, head node id prefix, worker node id); Ray's token, the S3 credentials and
    the endpoint in every process's environment, as a cluster's nodes would have them."""
    import secrets

    if os.geteuid() != 0:
        pytest.fail("a mount namespace of its own needs root (unshare --mount)")
    temp = tempfile.mkdtemp(prefix="od", dir="/tmp")  # short: Ray's socket paths
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    port = free_port()
    head = subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=0", '--resources={"sweep_driver": 100}',
         f"--temp-dir={temp}", "--include-dashboard=false", f"--dashboard-agent-listen-port={free_port()}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert head.returncode == 0, head.stderr[-2000:]
    ip = head.stdout.split("ray start --address='")[1].split(":")[0] if "--address='" in head.stdout else "127.0.0.1"
    address = f"{ip}:{port}"
    hold = Path(tempfile.mkdtemp(prefix="sprout-own-disk-", dir="/var/tmp"))  # outside what the node hides
    own = (
        f"{keep_visible(hold)}mount -t tmpfs tmpfs /tmp && {restore_visible(hold)}mount -t tmpfs tmpfs /dev/shm && "
        f"mkdir -p /tmp/home && export HOME=/tmp/home && "
        f"exec {RAY} start --address={address} --node-ip-address=127.0.0.2 --num-cpus=2 --block "
        f"--dashboard-agent-listen-port={free_port()}"  # a port of its own, not another Ray's on the machine
    )
    log = Path(temp) / "worker-node.log"
    with open(log, "w") as f:
        worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "bash", "-c", own],
                                  stdout=f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline, nodes = time.monotonic() + 120, {}
        while time.monotonic() < deadline and "127.0.0.2" not in nodes and worker.poll() is None:
            time.sleep(2)
            nodes = alive_nodes(address)  # in a process of its own: this one's Ray may have other settings
        assert "127.0.0.2" in nodes, f"nodes {nodes}; worker node exit {worker.poll()}:\n{log.read_text()[-3000:]}"
        yield address, nodes["127.0.0.2"]
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        kill_tree(processes_mentioning(temp))  # this cluster's processes only (not `ray stop`: other tests' Rays)
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(hold, ignore_errors=True)  # empty mount points (the mounts were the namespace's own)


def under_tmp() -> list[Path]:
    """The project and its environment where they lie under /tmp (a clone there): the node's
    private /tmp would hide them, and with them the ``ray`` it starts and the code it runs."""
    paths = sorted({Path(sys.prefix).resolve(), ROOT.resolve()}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in paths:
        if path.is_relative_to("/tmp") and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def keep_visible(hold: Path) -> str:
    """Shell commands, run before /tmp is replaced, that bind each path of ``under_tmp`` to a
    mount point under ``hold``."""
    return "".join(f"mkdir -p {hold}/{i} && mount --bind {p} {hold}/{i} && " for i, p in enumerate(under_tmp()))


def restore_visible(hold: Path) -> str:
    """Shell commands, run after, that put each back at its own path in the private /tmp."""
    return "".join(f"mkdir -p {p} && mount --bind {hold}/{i} {p} && " for i, p in enumerate(under_tmp()))


def alive_nodes(address: str) -> dict[str, str]:
    """{address: node id} of the cluster's live nodes, asked by a fresh driver process. The answer
    travels through a file: Ray may print its own lines (a raylet's warning) to a driver's stdout
    at any time, after ours too."""
    with tempfile.TemporaryDirectory() as d:
        answer = Path(d) / "nodes.json"
        code = (
            "import json, ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "open(sys.argv[2], 'w').write("
            "json.dumps({n['NodeManagerAddress']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"
        )
        p = subprocess.run([sys.executable, "-c", code, address, str(answer)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        return json.loads(answer.read_text()) if p.returncode == 0 and answer.is_file() else {}


def submit(address: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "RAY_ADDRESS": address})  # fmt: skip


def test_a_study_on_s3_runs_on_a_node_with_its_own_disk_and_local_storage_is_refused(own_disk_cluster, s3, tmp_path):  # noqa: F811
    address, worker_node = own_disk_cluster
    query, client, bucket = s3
    refused = submit(address, ["--smoke-test", "--output-dir", str(tmp_path / "local")], tmp_path)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    (line,) = refused.stderr.strip().splitlines()
    assert "a local directory" in line and "on a multi-node cluster (2 machines" in line
    assert not (tmp_path / "local" / "summary.json").exists()
    out = tmp_path / "out"
    p = submit(address, ["--smoke-test", "--num-samples", "2", "--output-dir", str(out),
                         "--storage-path", f"s3://{bucket}/own-disk{query}"], tmp_path)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["trials"] and all(t["status"] == "completed" for t in s["trials"])
    assert {t["placement"]["node_id"] for t in s["trials"]} == {worker_node}  # trained on the own-disk node
    certified = [t for t in s["trials"] if t.get("certified")]
    assert certified
    for t in certified:  # and certified there, from the bucket
        assert {p["node_id"] for p in t["metrics"]["test/shard_placement"]} == {worker_node}
    assert not (out / "ray").exists()
    stored = keys(client, bucket)
    assert any(k.startswith("own-disk/sensitivity-certify/") and k.endswith("certification.json") for k in stored)
