"""Ctrl-C and SIGTERM are failures: the study stops, its MLflow runs say KILLED, the sweep exits
128 + the signal (130, 143), and the study stays resumable with ``--resume``.

Tune stops a run gracefully on SIGINT (it checkpoints its experiment state one last time) and
then returns as if the run had ended, so the sweep cannot tell an interrupted study from a
finished one. ``InterruptWatch`` (a Tune callback) wraps Tune's handler once Tune installed
it, to record that the signal came; SIGTERM takes the same path. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import threading

from ray import tune

_state: dict[str, int | None] = {"signum": None}


class Interrupted(Exception):
    """Raised by the sweep after Tune returned from an interrupted run."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.exit_code = 128 + signum


def received() -> int | None:
    return _state["signum"]


def _again_or_interrupt(signum, frame):
    """Outside Tune's loop: the first signal interrupts (KeyboardInterrupt), a second one exits."""
    if _state["signum"] is not None:
        os._exit(128 + signum)
    _state["signum"] = signum
    raise KeyboardInterrupt


def _term(signum, frame):
    """SIGTERM: what Ctrl-C does (Tune's graceful stop inside its loop), with SIGTERM's code."""
    if _state["signum"] is not None:
        os._exit(128 + signum)
    handler = signal.getsignal(signal.SIGINT)
    if handler is _again_or_interrupt or not callable(handler):
        _state["signum"] = signum
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)  # Tune's (wrapped): a graceful stop
    _state["signum"] = signum


def install() -> None:
    """The sweep's own handlers (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _again_or_interrupt)
        signal.signal(signal.SIGTERM, _term)


class InterruptWatch(tune.Callback):
    """Records that Tune's SIGINT handler ran (Tune installs it before callbacks are set up)."""

    def setup(self, **info):
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler) or tune_handler is _again_or_interrupt:
            return

        def on_sigint(signum, frame):
            if _state["signum"] is None:
                _state["signum"] = signum
            tune_handler(signum, frame)  # stops the run after checkpointing; restores ours

        signal.signal(signal.SIGINT, on_sigint)
