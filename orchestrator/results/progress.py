"""The sweep's console while trials run: one line per epoch (the first with the trial's searched
values), one per attack of each screening (sent by the workers, ``orchestrator.tuner.console``),
and one per finished trial; Tune's own table is kept quiet."""

from __future__ import annotations

import time

from ray import tune

from trainables.evaluation import describe_flags

from ..record import TrialStatus, completed_status, drain, trial_error
from ..study import VAL, searched_values, short_name
from .format import short


class Progress(tune.Callback):
    """Console lines of one stage's trials."""

    def __init__(self, stage: str, total: int, console=None, done: int = 0):
        self.stage = stage
        self.total = total
        self.done = done  # trials an earlier launch ended
        self.t0 = time.time()
        self.console = console
        self.said: set[str] = set()
        self._last_drain = 0.0

    def __getstate__(self):  # pickled with the Tuner's state: an actor handle of this launch is not
        return {**self.__dict__, "console": None}

    def _line(self, trial, status: str) -> None:
        self.done += 1
        m = trial.last_result or {}
        flags = m.get(f"{VAL}masking_flags")
        val = (
            f"  val clean {m[VAL + 'clean_acc']:.4f} robust {m[VAL + 'robust_acc']:.4f}"
            if isinstance(m.get(VAL + "robust_acc"), float)
            else ""
        )
        print(
            f"[{self.stage}] {self.done}/{self.total} trial {trial.trial_id} {status}{val}"
            f"{'  masking ' + describe_flags(flags) if flags else ''}  ({time.time() - self.t0:.0f}s)",
            flush=True,
        )

    def drain(self, force: bool = False) -> None:
        """Print what trials said since the last call (at most once a second unless forced)."""
        if self.console is None or (not force and time.time() - self._last_drain < 1.0):
            return
        self._last_drain = time.time()
        for line in drain(self.console):
            print(line, flush=True)

    def on_step_end(self, iteration, trials, **info):
        self.drain()

    def _first(self, trial, result) -> str:
        """The searched values, said with a trial's first epoch."""
        if trial.trial_id in self.said:
            return ""
        self.said.add(trial.trial_id)
        values = [
            f"{short_name(k) if k != 'case' else 'case'}={short(v)}" for k, v in searched_values(trial.config).items()
        ]
        first = f"  [{' '.join(values)}]" if values else ""
        if result.get("resumed_from_epoch"):
            first += f"  (resumed from its epoch-{result['resumed_from_epoch']} checkpoint)"
        return first

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("epoch") or result.get("final"):
            return
        mon = ""
        if "monitor_clean_acc" in result:  # the per-epoch monitor ran (monitor.every), on val or test
            mon = (
                f"  monitor ({result.get('monitor_split', 'test')}) clean {result['monitor_clean_acc']:.3f}"
                f" robust {result.get('monitor_pgd_acc', float('nan')):.3f}"
            )
        print(
            f"[{self.stage}] trial {trial.trial_id} epoch {result['epoch']}: loss {result.get('loss', float('nan')):.4f}"
            f"{mon}  {result.get('images_per_s', 0):.0f} img/s{self._first(trial, result)}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.drain(force=True)
        status = completed_status(trial.last_result)
        self._line(trial, "stopped early" if status is TrialStatus.STOPPED else status.value)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.drain(force=True)
        self._line(trial, f"failed ({trial_error(trial)})")
