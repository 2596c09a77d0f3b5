"""Where a trial's start-up goes: with ``SPROUT_TRACE_STARTUP=FILE`` in the environment, the
trial's driver and its workers append one JSON line per milestone (wall time, process, that
process's CPU seconds) to FILE. ``bench/orchestration.py`` reads it; unset, nothing is written."""

from __future__ import annotations

import json
import os
import sys
import time

TRACE_ENV = "SPROUT_TRACE_STARTUP"
HEAVY = ("torch", "ray.train", "ray.data", "pandas", "matplotlib", "mlflow", "scipy")  # imports worth a second


def stamp(what: str, trial: str = "") -> None:
    """Append a milestone of this process to the trace file, if one is named."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    cpu = os.times()
    line = {
        "what": what,
        "trial": trial,
        "t": time.time(),
        "pid": os.getpid(),
        "cpu_s": cpu.user + cpu.system,
        "loaded": [m for m in HEAVY if m in sys.modules],  # what this process has imported by now
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def controller_callbacks() -> list:
    """With tracing on, a Ray Train callback that stamps the controller's milestones (its start,
    the worker group asked for, started with its process group, running the training function;
    at the end, the group's shutdown asked for and done, the controller finished); none
    otherwise. It runs in the controller's process."""
    if not os.environ.get(TRACE_ENV):
        return []
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class StartupTrace(ControllerCallback, WorkerGroupCallback):
        def after_controller_start(self, train_run_context) -> None:
            stamp("controller")

        def before_worker_group_start(self, worker_group_context) -> None:
            stamp("group_start")

        def after_worker_group_start(self, worker_group) -> None:
            stamp("group_started")

        def after_worker_group_training_start(self, worker_group) -> None:
            stamp("training_start")

        # the end: the controller sees the training function done, stops the group, finishes
        def before_worker_group_shutdown(self, worker_group) -> None:
            stamp("group_shutdown")

        def after_worker_group_shutdown(self, worker_group_context) -> None:
            stamp("group_stopped")

        def after_controller_finish(self, result) -> None:
            stamp("controller_finish")

    return [StartupTrace()]
