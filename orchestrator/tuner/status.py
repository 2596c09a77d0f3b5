"""What Tune and the worker say about a trial, in the study's status vocabulary
(``orchestrator.study.status``): its status when Tune completes it, and a failed trial's cause."""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..study.status import ENDED, TrialStatus  # noqa: F401 - the vocabulary, re-exported for the Ray layer


def completed_status(last_result: Mapping[str, Any] | None) -> TrialStatus:
    """The status of a trial Tune reports as complete: what its worker said last (completed or
    diverged), else stopped early by the scheduler."""
    said = (last_result or {}).get("status")
    return TrialStatus(said) if said in (TrialStatus.COMPLETED, TrialStatus.DIVERGED) else TrialStatus.STOPPED


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")


def error_cause(err: BaseException | str | None, limit: int = 300) -> str | None:
    """A failed trial's cause as a person reads it: the innermost exception's type and first
    line (through Tune's, Ray's and Ray Train's wrappers), without colour codes or banners."""
    if err is None:
        return None
    e, seen = err, set()
    while isinstance(e, BaseException) and id(e) not in seen:
        seen.add(id(e))
        inner = (getattr(e, "cause", None) or getattr(e, "controller_failure", None)
                 or next(iter((getattr(e, "worker_failures", None) or {}).values()), None) or e.__cause__)
        if not isinstance(inner, BaseException):
            break
        e = inner
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines()
             if ln.strip() and not ln.strip().startswith(("Traceback", "File "))]
    # a RayTaskError's text is a banner and a traceback; its last line is "Type: message"
    line = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), None)
    if line is None and isinstance(e, BaseException):
        line = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    elif line is None:
        line = lines[-1] if lines else ""
    return line[:limit]


def trial_error(trial) -> str:
    """The first line of the exception that ended a failed trial (Tune keeps it on the trial)."""
    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001 - an error file Tune could not read: say what we know
        err = None
    return error_cause(err) or "the trial raised (no error recorded)"
