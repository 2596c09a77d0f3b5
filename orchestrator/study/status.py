"""A trial's status: one closed vocabulary for the ledger, selection, MLflow, the console and the
summary (what Tune says about a trial is turned into it by ``orchestrator.tuner.status``)."""
from __future__ import annotations

from enum import Enum


class TrialStatus(str, Enum):
    """A trial's status. A ``str`` Enum: it is written to JSON and compared with strings as is."""

    RUNNING = "running"  # started and not ended (or interrupted: resumed by --resume)
    COMPLETED = "completed"  # trained every epoch and reported its final result
    DIVERGED = "diverged"  # its loss or weights became non-finite
    FAILED = "failed"  # it raised
    STOPPED = "stopped"  # stopped early by the scheduler (ASHA)

    def __str__(self) -> str:
        return self.value

    @property
    def ended(self) -> bool:
        return self is not TrialStatus.RUNNING

    @property
    def mlflow(self) -> str:
        """The MLflow run status it ends in."""
        return {TrialStatus.COMPLETED: "FINISHED", TrialStatus.STOPPED: "KILLED",
                TrialStatus.RUNNING: "RUNNING"}.get(self, "FAILED")


ENDED = tuple(s.value for s in TrialStatus if s.ended)
