"""Where a trial's start-up goes: with ``SPROUT_TRACE_STARTUP=FILE`` in the environment, the
trial's driver and its workers append one JSON line per milestone (wall time, process, that
process's CPU seconds) to FILE. ``bench/orchestration.py`` reads it; unset, nothing is written."""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "SPROUT_TRACE_STARTUP"


def stamp(what: str, trial: str = "") -> None:
    """Append a milestone of this process to the trace file, if one is named."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    cpu = os.times()
    line = {"what": what, "trial": trial, "t": time.time(), "pid": os.getpid(), "cpu_s": cpu.user + cpu.system}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
