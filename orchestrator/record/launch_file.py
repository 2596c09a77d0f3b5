"""The launch file: a launch's own record in its output directory (``launch.json``), read and
written only by the sweep process. It holds what a later ``--resume`` needs and nothing Tune
pickled: the launch (study, plan fingerprint, storage path), the MLflow run ids (the parent's and
one per trial) and every trial's record (the ledger, ``orchestrator.record.ledger``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainables.files import write_json

LAUNCH_FILE = "launch.json"
EARLIER_NAME = "mlflow_runs.json"  # what output directories written before the rename hold


def launch_file_in(output_dir: Path) -> Path:
    """The launch file of an output directory: ``launch.json``, or the earlier name where only
    that exists (so ``--resume`` of an older launch finds its record)."""
    output_dir = Path(output_dir)
    if not (output_dir / LAUNCH_FILE).exists() and (output_dir / EARLIER_NAME).exists():
        return output_dir / EARLIER_NAME
    return output_dir / LAUNCH_FILE


def trial_key(stage: str, trial_id: str) -> str:
    """A trial's key in the launch file (trial ids are unique within a launch, not across stages)."""
    return f"{stage}/{trial_id}"


class LaunchFile:
    """The launch file of one output directory. Every access reads or writes the file itself, so
    a killed sweep leaves what it had recorded, and a resumed one starts from it."""

    def __init__(self, output_dir: Path):
        self.path = launch_file_in(output_dir)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def write(self, state: dict[str, Any]) -> None:
        write_json(self.path, state)

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """One read and one write: ``change`` edits the state in place."""
        state = self.read()
        change(state)
        self.write(state)

    def start(self, launch: dict[str, Any]) -> None:
        """A new launch: its description, no trials yet."""
        self.write({**launch, "trials": {}, "ledger": {}})

    def trial_run_id(self, key: str) -> str | None:
        """The MLflow run of the trial ``key`` (``trial_key``)."""
        return self.read().get("trials", {}).get(key)

    def set_trial_run_id(self, key: str, run_id: str) -> None:
        self.update(lambda s: s.setdefault("trials", {}).__setitem__(key, run_id))
