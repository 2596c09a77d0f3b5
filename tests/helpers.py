"""Helpers shared by the tests that drive a sweep as a separate process."""
import subprocess
import time
from pathlib import Path


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
