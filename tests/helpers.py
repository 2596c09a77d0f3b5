"""Pieces the tests share: the repository root, running the sweep command, its MLflow store,
and the process trees of a test's own sweep or cluster."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"


def sweep(*args, cwd, timeout=900, expect: int = 0) -> subprocess.CompletedProcess:
    """Run ``orchestrator/sweep.py ARGS`` to the end; it must exit with ``expect``."""
    p = subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert p.returncode == expect, f"exit {p.returncode}, expected {expect}\n" + p.stdout[-3000:] + p.stderr[-3000:]
    return p


def mlflow_client(out: Path):
    """An MLflow client of a sweep's own store (``OUT/mlflow.db``)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{Path(out) / 'mlflow.db'}")


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Wait until ``text`` appears in the process's log; fail if it ends first or never says it."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep ended before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {text!r}:\n{log.read_text()[-3000:]}")


def descendants(pids) -> list:
    """The processes started, directly or not, by any of ``pids`` (the processes themselves too)."""
    import psutil

    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                out[q.pid] = q
        except psutil.NoSuchProcess:
            continue
    return list(out.values())


def ray_train_workers(pids) -> list:
    """The Ray Train worker processes under ``pids``: those of this test's own sweep or cluster,
    never another test's (the suite runs tests in parallel)."""
    import psutil

    found = []
    for p in descendants(pids):
        try:
            if any("RayTrainWorker" in c for c in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line mentions ``text`` (a Ray cluster's temp dir)."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(text in c for c in (p.info["cmdline"] or [])):
                pids.append(p.info["pid"])
        except psutil.Error:
            continue
    return pids


def kill_tree(pids) -> None:
    """SIGKILL ``pids`` and everything they started: a scoped `ray stop --force`."""
    import psutil

    procs = descendants(pids)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
