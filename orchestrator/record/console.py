"""Lines from trials and certification shards to the sweep's console, which Tune's results (one
per epoch) cannot carry: a worker's screening says each attack's accuracy while it runs, a
resumed worker says which checkpoint it fell back to. Senders never wait; the sweep prints what
arrived (``orchestrator.results.progress``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ConsoleLines:
    """The mailbox (a Ray actor with no CPU of its own, living as long as the sweep's Ray)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


def console_lines():
    """A new mailbox actor."""
    import ray

    return ray.remote(num_cpus=0)(ConsoleLines).remote()


def console_say(console: Any, label: str, what: str) -> Callable[[str], None] | None:
    """A function that sends ``"<label> <what> <line>"`` to the mailbox (None without one)."""
    if console is None:
        return None
    return lambda line: console.put.remote(f"{label} {what} {line.strip()}")


def drain(console: Any, timeout: float = 10.0) -> list[str]:
    """What arrived since the last drain (nothing when the mailbox cannot be reached: the
    console is a convenience and never stops a study)."""
    import ray

    if console is None:
        return []
    try:
        return ray.get(console.drain.remote(), timeout=timeout)
    except Exception:  # noqa: BLE001
        return []
