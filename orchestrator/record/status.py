"""A trial's status: one closed vocabulary for the ledger, selection, MLflow, the console and the
summary, and what Tune and the worker say about a trial turned into it (its status when Tune
completes it, a failed trial's cause). No Ray import: Tune's trial objects are only read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from typing import Any


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
        return {TrialStatus.COMPLETED: "FINISHED", TrialStatus.STOPPED: "KILLED", TrialStatus.RUNNING: "RUNNING"}.get(
            self, "FAILED"
        )


ENDED = tuple(s.value for s in TrialStatus if s.ended)


def completed_status(last_result: Mapping[str, Any] | None) -> TrialStatus:
    """The status of a trial Tune reports as complete: what its worker said last (completed or
    diverged), else stopped early by the scheduler."""
    said = (last_result or {}).get("status")
    return TrialStatus(said) if said in (TrialStatus.COMPLETED, TrialStatus.DIVERGED) else TrialStatus.STOPPED


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")


_TEXT_MAX = 1 << 16  # characters of an exception's text read for its cause (a message may quote a tensor)


def _innermost(err: BaseException) -> BaseException:
    """The exception under Tune's, Ray's and Ray Train's wrappers."""
    e, seen = err, set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = (
            getattr(e, "cause", None)
            or getattr(e, "controller_failure", None)
            or next(iter((getattr(e, "worker_failures", None) or {}).values()), None)
            or e.__cause__
        )
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def _cut(line: str, limit: int) -> str:
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_cause(err: BaseException | str | None, limit: int = 300) -> str | None:
    """A failed trial's cause as a person reads it: the innermost exception's type and first
    line (through Tune's, Ray's and Ray Train's wrappers), without colour codes or banners, at
    most ``limit`` characters however much the exception's text holds."""
    if err is None:
        return None
    e = _innermost(err) if isinstance(err, BaseException) else err
    lines = [
        ln.strip()
        for ln in _ANSI.sub("", str(e)[:_TEXT_MAX]).splitlines()
        if ln.strip() and not ln.strip().startswith(("Traceback", "File "))
    ]
    # a RayTaskError's text is a banner and a traceback; its last line is "Type: message"
    line = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), None)
    if line is None and isinstance(e, BaseException):
        # the message's own first line: a message that quotes data (a tensor, an array) starts
        # with what it says, not with the data
        line = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    elif line is None:
        line = lines[-1] if lines else ""
    return _cut(line, limit)


def trial_error(trial) -> str:
    """The first line of the exception that ended a failed trial (Tune keeps it on the trial)."""
    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001 - an error file Tune could not read: say what we know
        err = None
    return error_cause(err) or "the trial raised (no error recorded)"
