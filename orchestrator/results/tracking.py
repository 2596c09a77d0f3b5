"""MLflow: one parent run per study launch, one child run per trial.

Every MLflow write happens in the sweep (Tune driver) process through a Tune callback, so a
SQLite store has a single writer and Tune's view of a trial (finished, stopped, diverged,
failed) is what MLflow records: no trial run is left RUNNING. Runs interrupted by a killed
driver are marked KILLED when the study is resumed; a trial run again goes on in its old run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from ray import tune

from trainables.cli import write_json
from trainables.schema import flatten
from trainables.masking import describe_flags

from .stages import CHECKPOINT_FILE
from .summary import short_name
from trainables.errors import ConfigError

RUNS_FILE = "mlflow_runs.json"
# Results that are settings, not measurements: MLflow params, not metrics.
SETTINGS = ("eps", "n_eval", "autoattack_n", "final", "attack_step_size", "large_eps", "cw_l2_radius", "cw_l2_n",
            "robust_acc_min_n", "val/n_eval", "val/robust_acc_min_n")
CHECKPOINT_ARTIFACT_MAX = 50 * 2**20  # a final checkpoint up to this size is also logged as an artifact


def default_tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def normalize_uri(uri: str) -> str:
    """Absolute SQLite paths (Ray trials change directory); servers as given."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        return f"sqlite:///{Path(rel).expanduser().resolve()}"
    if "://" not in uri or (uri.startswith("sqlite:") and not uri.startswith("sqlite:///")):
        raise ConfigError(f"--tracking-uri {uri!r}: expected sqlite:////ABS/PATH/mlflow.db or http(s)://HOST:PORT")
    return uri


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail before Ray starts when the store cannot be used."""
    if uri.startswith("sqlite:"):
        path = Path(uri[len("sqlite:///"):])
        parent = path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--tracking-uri {uri}: cannot create {parent} ({e.strerror})") from None
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"--tracking-uri {uri}: {parent} is not writable")
        return
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:  # a real MLflow API call: a server that answers /health but is not MLflow is refused here
            url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status >= 400:
                    raise OSError(f"HTTP {r.status}")
                body = json.loads(r.read(1 << 20) or b"{}")
            if not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
                raise ValueError("the answer is not an MLflow experiments list")
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            raise ConfigError(f"--tracking-uri {uri}: MLflow tracking server unreachable or not MLflow "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
        return
    if uri.startswith("databricks"):
        return
    raise ConfigError(f"--tracking-uri {uri}: unsupported scheme; expected sqlite:/// or http(s)://")


def provenance() -> dict[str, str]:
    """Git commit and package versions: where a run came from."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if dirty and commit != "unknown":
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    tags = {"git_commit": commit}
    for pkg in ("torch", "torchvision", "ray", "optuna", "mlflow", "pyautoattack", "sprout-orchestrator"):
        try:
            tags[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return tags


def _metric_items(result: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in result.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if math.isfinite(v):
                out[k] = float(v)
    return out


class Tracker:
    """Parent run bookkeeping for one study launch (or its resumption)."""

    def __init__(self, uri: str, study: str, output_dir: Path):
        self.uri = uri
        self._client = None
        self.output_dir = output_dir
        exp = self.client.get_experiment_by_name(study)
        if exp is None:
            # a local store keeps its artifacts in the study's output directory, which is then
            # self-contained (a server keeps them where it was told to)
            location = (output_dir / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
            self.experiment_id = self.client.create_experiment(study, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        # the MLflow UI opens the experiment on its training runs, not its GenAI view
        self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
        self.state_path = output_dir / RUNS_FILE

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    def __getstate__(self):
        # Tune pickles its callbacks with the experiment state it saves (the sweep never loads
        # it back): keep no client in it.
        return {**self.__dict__, "_client": None}

    @property
    def state(self) -> dict[str, Any]:
        """The launch's run ids (parent, experiment, one per trial) and its trial records
        (``orchestrator.ledger``), read from RUNS_FILE, which every launch of the study shares."""
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.state_path, state)

    def trial_run_id(self, key: str) -> str | None:
        return self.state.get("trials", {}).get(key)

    def set_trial_run_id(self, key: str, run_id: str) -> None:
        state = self.state
        state.setdefault("trials", {})[key] = run_id
        self.save_state(state)

    def start_parent(self, study: str, params: Mapping[str, Any], tags: Mapping[str, str], resume: bool,
                     launch: Mapping[str, Any] | None = None) -> str:
        """The study's parent run: a new one, or on ``--resume`` the launch's own. ``launch``
        (its plan fingerprint and storage path) is kept in the run file for later resumes."""
        pid = self.state.get("parent_run_id")
        if resume and pid:
            self.client.update_run(pid, "RUNNING")
            self.mark_interrupted()
            return pid
        run = self.client.create_run(self.experiment_id, run_name=f"{study}-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={**tags, "study": study, "kind": "study"})
        pid = run.info.run_id
        self.save_state({"parent_run_id": pid, "experiment_id": self.experiment_id, "study": study, **(launch or {}),
                         "trials": {}, "ledger": {}})
        self.log_params(pid, params)
        return pid

    def mark_interrupted(self) -> int:
        """Child runs left RUNNING by a killed driver become KILLED (they are resumed as
        RUNNING again if Tune restarts their trial)."""
        n = 0
        for trial_id, run_id in self.state.get("trials", {}).items():
            try:
                run = self.client.get_run(run_id)
            except Exception:  # noqa: BLE001
                continue
            if run.info.status == "RUNNING":
                self.client.set_tag(run_id, "trial_status", "interrupted")
                self.client.set_terminated(run_id, "KILLED")
                n += 1
        return n

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k[:250], json.dumps(v) if not isinstance(v, str) else v[:6000]) for k, v in flat.items()]
        existing = set(self.client.get_run(run_id).data.params)
        items = [p for p in items if p.key not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_artifact_json(self, run_id: str, name: str, data: Any) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.client.log_artifact(run_id, str(p))

    def finish_parent(self, status: str = "FINISHED") -> None:
        pid = self.state.get("parent_run_id")
        if pid:
            self.client.set_terminated(pid, status)


class MLflowTrialCallback(tune.Callback):
    """Creates a child run per trial, logs per-epoch metrics, final metrics, tags and
    artifacts, and ends the run with the trial's real status."""

    def __init__(self, tracker: Tracker, *, parent_run_id: str, stage: str, study: str,
                 base: Mapping[str, Any], refs: Mapping[str, str], tags: Mapping[str, str],
                 resumes: Mapping[str, str] | None = None):
        self.tracker = tracker
        self.resumes = dict(resumes or {})  # config key -> Train run of a trial run again: its MLflow run goes on
        self.parent = parent_run_id
        self.stage = stage
        self.study = study
        self.base = dict(base)
        self.refs = dict(refs)
        self.tags = dict(tags)
        self._described: set[str] = set()  # trials whose resolved config is logged
        self._run_ids: dict[str, str] = {}

    def _key(self, trial) -> str:
        return f"{self.stage}/{trial.trial_id}"

    def run_id(self, trial) -> str | None:
        """The trial's MLflow run (read from the run file once, then remembered: it never changes)."""
        key = self._key(trial)
        if key not in self._run_ids:
            run_id = self.tracker.trial_run_id(key)
            if run_id is None:
                from .ledger import config_key

                train_run = self.resumes.get(config_key(trial.config))
                run_id = train_run and self.tracker.trial_run_id(f"{self.stage}/{train_run.removeprefix('train-')}")
                if not run_id:
                    return None
                self.tracker.set_trial_run_id(key, run_id)
            self._run_ids[key] = run_id
        return self._run_ids[key]

    def config(self, trial) -> dict[str, Any]:
        """The trial's config as its worker resolved and reported it; before the first report
        (or for a trial that failed before one), the config it was given."""
        reported = (trial.last_result or {}).get("resolved_config")
        if reported:
            return json.loads(reported)
        from .driver import trial_train_config

        return trial_train_config(self.base, trial.config, self.refs)

    def _describe(self, run_id: str, cfg: Mapping[str, Any]) -> None:
        self.tracker.client.set_tag(run_id, "model", str(cfg.get("model")))
        self.tracker.client.set_tag(run_id, "dataset", str(cfg.get("dataset")))
        self.tracker.log_params(run_id, cfg)

    def on_trial_start(self, iteration, trials, trial, **info):
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is not None:
            client.update_run(run_id, "RUNNING")
            client.set_tag(run_id, "trial_status", "running")
            return
        cfg = self.config(trial)  # as given: the resolved config follows with the first result
        tags = {**self.tags, "mlflow.parentRunId": self.parent, "study": self.study, "stage": self.stage,
                "trial_id": trial.trial_id, "method": str(cfg.get("method")), "trial_status": "running"}
        searched = flatten({k: v for k, v in trial.config.items() if k != "case"})
        tags["searched_params"] = ",".join(short_name(k) for k in searched)
        run = client.create_run(self.tracker.experiment_id, run_name=f"{self.stage}-{trial.trial_id}", tags=tags)
        self.tracker.set_trial_run_id(self._key(trial), run.info.run_id)
        self._run_ids[self._key(trial)] = run.info.run_id
        # the searched values under the names a person reads (alpha, gamma_beta), beside the dotted config
        self.tracker.log_params(run.info.run_id, {short_name(k): v for k, v in searched.items()})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        run_id = self.run_id(trial)
        if run_id is None:
            return
        if result.get("resolved_config") and trial.trial_id not in self._described:
            self._described.add(trial.trial_id)
            self._describe(run_id, json.loads(result["resolved_config"]))
            if result.get("precision"):  # what the training forwards ran in (fast.amp=auto decides per method)
                self.tracker.log_params(run_id, {"precision": result["precision"]})
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        ts = int(time.time() * 1000)
        skip = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
                "iterations_since_restore", "pid", "done", *SETTINGS, "resumed_from_epoch"}
        if not result.get("final"):
            # per epoch the search objective repeats the monitor (monitor_*): MLflow keeps one
            # series per meaning, and clean_acc / robust_acc only from the final evaluation
            skip |= {"clean_acc", "robust_acc", "val/clean_acc", "val/robust_acc"}
        settings = {k: result[k] for k in SETTINGS if k in result}
        if settings:
            self.tracker.log_params(run_id, settings)
        if result.get("resumed_from_epoch"):
            self.tracker.client.set_tag(run_id, "resumed_from_epoch", str(result["resumed_from_epoch"]))
        metrics = [Metric(k, v, ts, step) for k, v in _metric_items(result).items() if k not in skip]
        for i in range(0, len(metrics), 500):
            self.tracker.client.log_batch(run_id, metrics=metrics[i:i + 500])

    def _finish(self, trial, status: str, mlflow_status: str, error: str | None = None) -> None:
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is None:
            return
        client.set_tag(run_id, "trial_status", status)
        last = trial.last_result or {}
        if last.get("masking_flags") is not None:
            client.set_tag(run_id, "masking_flags", ",".join(last.get("masking_flags") or []) or "none")
        try:
            cfg = self.config(trial)
            if trial.trial_id not in self._described:  # failed before its first report
                self._describe(run_id, cfg)
            self.tracker.log_artifact_json(run_id, "config.json", cfg)
            ck = last.get("checkpoint_path")
            if ck:
                client.set_tag(run_id, "checkpoint", str(Path(ck, CHECKPOINT_FILE)))
            if ck and Path(ck, "eval.json").exists():
                client.log_artifact(run_id, str(Path(ck, "eval.json")))
            if ck and Path(ck, CHECKPOINT_FILE).exists() and Path(ck, CHECKPOINT_FILE).stat().st_size <= CHECKPOINT_ARTIFACT_MAX:
                client.log_artifact(run_id, str(Path(ck, CHECKPOINT_FILE)))
            if error:
                self.tracker.log_artifact_json(run_id, "error.json", {"error": error})
        finally:
            client.set_terminated(run_id, mlflow_status)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status = last.get("status")
        if status == "diverged":
            self._finish(trial, "diverged", "FAILED")
        elif status == "completed":
            self._finish(trial, "completed", "FINISHED")
        else:  # stopped early by the scheduler (ASHA) before its last epoch
            self._finish(trial, "stopped", "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        cause = trial_error(trial)
        if self.run_id(trial) is not None:
            self.tracker.client.set_tag(self.run_id(trial), "error", cause)
        self._finish(trial, "failed", "FAILED", error=cause)


class ConsoleLines:
    """Lines from trials to the sweep's console (a Ray actor): a worker's final evaluation says
    each attack's accuracy and seconds while it runs, which Tune's results (one per epoch)
    cannot carry. Workers send without waiting; ``Progress`` prints what arrived."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def put(self, line: str) -> None:
        self.lines.append(line)

    def drain(self) -> list[str]:
        out, self.lines = self.lines, []
        return out


def console_lines():
    """The actor behind ``ConsoleLines`` (no CPU of its own; it lives as long as the sweep's Ray)."""
    import ray

    return ray.remote(num_cpus=0)(ConsoleLines).remote()


class Progress(tune.Callback):
    """One console line per epoch (the first with the trial's searched values), one per attack
    of each final evaluation, and one per finished trial; Tune's own table is kept quiet."""

    def __init__(self, stage: str, total: int, console=None, done: int = 0):
        self.stage = stage
        self.total = total
        self.done = done  # trials an earlier launch ended
        self.t0 = time.time()
        self.console = console
        self.said: set[str] = set()
        self._last_drain = 0.0

    def __getstate__(self):  # pickled with the Tuner's state: an actor handle of this launch is not
        state = dict(self.__dict__)
        state["console"] = None
        return state

    def _line(self, trial, status: str) -> None:
        self.done += 1
        m = trial.last_result or {}
        flags = m.get("masking_flags")
        val = (f"  (val clean {m['val/clean_acc']:.4f} robust {m['val/robust_acc']:.4f})"
               if isinstance(m.get("val/robust_acc"), float) else "")
        print(f"[{self.stage}] {self.done}/{self.total} trial {trial.trial_id} {status}: "
              f"clean {m.get('clean_acc', float('nan')):.4f}  robust {m.get('robust_acc', float('nan')):.4f}{val}"
              f"{'  masking ' + describe_flags(flags) if flags else ''}  ({time.time() - self.t0:.0f}s)", flush=True)

    def drain(self, force: bool = False) -> None:
        """Print what trials said since the last call (at most once a second unless forced)."""
        if self.console is None or (not force and time.time() - self._last_drain < 1.0):
            return
        self._last_drain = time.time()
        import ray

        try:
            lines = ray.get(self.console.drain.remote(), timeout=10)
        except Exception:  # the console is a convenience: never let it stop a study
            return
        for line in lines:
            print(line, flush=True)

    def on_step_end(self, iteration, trials, **info):
        self.drain()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("epoch") and not result.get("final"):
            first = ""
            if trial.trial_id not in self.said:
                self.said.add(trial.trial_id)
                searched = flatten({k: v for k, v in trial.config.items() if k != "case"})
                case = (trial.config.get("case") or {}).get("name")
                values = ([f"case={case}"] if case else []) + [f"{short_name(k)}={_short(v)}" for k, v in searched.items()]
                first = f"  [{' '.join(values)}]" if values else ""
                if result.get("resumed_from_epoch"):
                    first += f"  (resumed from its epoch-{result['resumed_from_epoch']} checkpoint)"
            mon = ""
            if "monitor_clean_acc" in result:  # the per-epoch monitor ran (monitor.every), on val or test
                mon = (f"  monitor ({result.get('monitor_split', 'test')}) clean {result['monitor_clean_acc']:.3f}"
                       f" robust {result.get('monitor_pgd_acc', float('nan')):.3f}")
            print(f"[{self.stage}] trial {trial.trial_id} epoch {result['epoch']}: loss {result.get('loss', float('nan')):.4f}"
                  f"{mon}  {result.get('images_per_s', 0):.0f} img/s{first}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.drain(force=True)
        status = (trial.last_result or {}).get("status", "stopped")
        self._line(trial, "stopped early" if status == "running" else status)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.drain(force=True)
        self._line(trial, f"failed ({trial_error(trial)})")


def trial_error(trial) -> str:
    """The first line of the exception that ended a failed trial (Tune keeps it on the trial)."""
    from .summary import error_cause

    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001 - an error file Tune could not read: say what we know
        err = None
    return error_cause(err) or "the trial raised (no error recorded)"


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
