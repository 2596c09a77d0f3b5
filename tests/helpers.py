"""Helpers shared by the tests that drive a sweep as a separate process."""
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "orchestrator" / "sweep.py"


def sweep(*args, cwd, timeout=900) -> subprocess.CompletedProcess:
    """Run ``orchestrator/sweep.py ARGS`` to the end; it must exit 0."""
    p = subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


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
