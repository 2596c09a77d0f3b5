"""Pieces the tests share: the repository root, running the sweep command, its MLflow store,
the process trees of a test's own sweep or cluster, and data sets in CIFAR's and ImageNet's
formats written on the spot."""

import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"


def sweep(*args, cwd, timeout=900, expect: int = 0, env=None) -> subprocess.CompletedProcess:
    """Run ``orchestrator/sweep.py ARGS`` to the end; it must exit with ``expect``."""
    p = subprocess.run(
        [sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )
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


def write_cifar10(root, test_labels, seed=0, n_batch=64, n_test=50):
    """CIFAR-10's python format: class c is an image of its own colour plus noise, so a small
    model learns it in a few dozen steps; the test images are the same in every copy, their
    labels are ``test_labels``."""
    rng = np.random.default_rng(seed)
    colours = np.array(
        [
            [0, 0, 0],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [255, 0, 255],
            [0, 255, 255],
            [255, 255, 255],
            [128, 128, 128],
            [255, 128, 0],
        ]
    )
    pattern = np.repeat(colours, 1024, axis=1)  # (10, 3072): channel-major, as CIFAR stores it

    def images(labels):
        noise = rng.integers(-20, 21, (len(labels), 3072))
        return np.clip(pattern[labels] + noise, 0, 255).astype(np.uint8)

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for i in range(1, 6):
        y = np.arange(n_batch) % 10
        (base / f"data_batch_{i}").write_bytes(pickle.dumps({"data": images(y), "labels": list(y)}))
    y_true = np.arange(n_test) % 10
    (base / "test_batch").write_bytes(pickle.dumps({"data": images(y_true), "labels": list(test_labels(y_true))}))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def write_image_folder(root: Path, classes: int = 4, per_class: int = 12, size: int = 20, seed: int = 0) -> Path:
    """An ImageNet-format root (``train/`` and ``val/``, a folder of JPEG files per class): class c
    is an image of its own colour plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            colour = np.array([(c * 80) % 256, (c * 150) % 256, (c * 40 + 100) % 256])
            for i in range(n):
                pixels = np.clip(colour + rng.integers(-25, 26, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"img_{i}.JPEG")
    return root


# Headless Chromium as the machine's probe runs it: without the background-networking flags it
# tries Google's hosts at every start, which this closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """Debian's Chromium (the README's test command installs it); the browser tests skip, saying
    so, where there is none."""
    import shutil

    import pytest

    path = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if path is None:
        pytest.skip("no headless Chromium: the README's test command installs Debian's chromium")
    return path


def render(url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = 20_000) -> str:
    """The page's DOM after its scripts ran (``budget_ms`` of virtual time: a single-page app's
    requests to its server finish within it), and a 1280x800 screenshot when asked."""
    base = [chromium(), *CHROMIUM_FLAGS, f"--virtual-time-budget={budget_ms}"]
    dom = subprocess.run(
        [*base, f"--user-data-dir={profile / 'dom'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    if screenshot is not None:
        shot = subprocess.run(
            [*base, f"--user-data-dir={profile / 'shot'}", "--window-size=1280,800", f"--screenshot={screenshot}", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return dom.stdout


def serve(cmd: list[str], port: int, path: str = "/", timeout: float = 120, env=None) -> subprocess.Popen:
    """Start a web server's command and wait until ``http://127.0.0.1:PORT{path}`` answers."""
    import urllib.request

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() - t0 > timeout:
                proc.kill()
                raise AssertionError(f"{' '.join(cmd)}: no answer on port {port} (exit {proc.poll()})") from None
            time.sleep(0.5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
