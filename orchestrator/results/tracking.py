"""MLflow: one parent run per study launch, one child run per trial, and under each certified
trial's run a child run of its certification on the test split.

Every MLflow write happens in the sweep (Tune driver) process, through a Tune callback for the
trials, so a SQLite store has a single writer and Tune's view of a trial (finished, stopped,
diverged, failed) is what MLflow records: no trial run is left RUNNING. Runs interrupted by a
killed driver are marked KILLED when the study is resumed; a trial run again goes on in its old
run. The run ids live in the launch's run file (``orchestrator.tuner.runfile``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune

from trainables.errors import ConfigError
from trainables.schema import flatten

from ..study.names import NOT_METRICS, SETTINGS, TEST, VAL
from ..study.refs import CHECKPOINT_FILE, EVAL_FILE
from ..study.space import config_key, searched_values, short_name, trial_config
from ..tuner.ledger import TRAIN_RUN_PREFIX
from ..tuner.runfile import RunFile, trial_key
from ..tuner.status import TrialStatus, completed_status, trial_error

CHECKPOINT_ARTIFACT_MAX = 50 * 2**20  # a final checkpoint up to this size is also logged as an artifact
SERVER_WAIT_S = 60.0  # how long the sweep waits for a tracking server that is still starting


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


def _check_sqlite(uri: str) -> None:
    parent = Path(uri[len("sqlite:///"):]).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--tracking-uri {uri}: cannot create {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--tracking-uri {uri}: {parent} is not writable")


def _ask_server(uri: str, timeout: float) -> None:
    """A real MLflow API call: a server that answers /health but is not MLflow is refused."""
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status >= 400:
            raise OSError(f"HTTP {r.status}")
        body = json.loads(r.read(1 << 20) or b"{}")
    if not isinstance(body, dict) or not set(body) <= {"experiments", "next_page_token"}:
        raise ValueError("the answer is not an MLflow experiments list")


def _refused(e: BaseException) -> bool:
    """Nothing listens yet (a server still starting), as opposed to an answer that is wrong."""
    reason = getattr(e, "reason", e)
    return isinstance(reason, ConnectionRefusedError) or isinstance(e, ConnectionRefusedError)


def check_tracking_uri(uri: str, timeout: float = 5.0, wait_s: float = SERVER_WAIT_S,
                       say: Callable[[str], None] = print) -> None:
    """Fail before Ray starts when the store cannot be used. A server that refuses connections
    is waited for up to ``wait_s`` (``ray up`` may have just started it), saying so once."""
    if uri.startswith("sqlite:"):
        return _check_sqlite(uri)
    if uri.startswith("databricks"):
        return
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"--tracking-uri {uri}: unsupported scheme; expected sqlite:/// or http(s)://")
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            return _ask_server(uri, timeout)
        except Exception as e:  # noqa: BLE001 - any failure means unusable
            if _refused(e) and time.monotonic() < deadline:
                if not waited:
                    say(f"mlflow: {uri} refuses connections; waiting up to {wait_s:.0f} s for it to start")
                    waited = True
                time.sleep(2.0)
                continue
            raise ConfigError(f"--tracking-uri {uri}: MLflow tracking server unreachable or not MLflow "
                              f"({type(e).__name__}: {str(e)[:200]})") from None


def provenance() -> dict[str, str]:
    """Git commit and package versions: where a run came from."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parents[2]
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


def metric_items(result: Mapping[str, Any], skip: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """The finite numbers of a result that are measurements (flags as 0/1)."""
    out = {}
    for k, v in result.items():
        if k in skip or k in NOT_METRICS:
            continue
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


class Tracker:
    """MLflow bookkeeping of one study launch (or its resumption): the experiment, the parent
    run, parameters, metrics and artifacts."""

    def __init__(self, uri: str, study: str, output_dir: Path, runfile: RunFile):
        self.uri = uri
        self._client = None
        self.output_dir = output_dir
        self.runfile = runfile
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

    def start_parent(self, study: str, params: Mapping[str, Any], tags: Mapping[str, str], resume: bool,
                     launch: Mapping[str, Any] | None = None) -> str:
        """The study's parent run: a new one, or on ``--resume`` the launch's own. ``launch``
        (its plan fingerprint and storage path) is kept in the run file for later resumes."""
        pid = self.runfile.read().get("parent_run_id")
        if resume and pid:
            self.client.update_run(pid, "RUNNING")
            self.mark_interrupted()
            return pid
        run = self.client.create_run(self.experiment_id, run_name=f"{study}-{time.strftime('%Y%m%d-%H%M%S')}",
                                     tags={**tags, "study": study, "kind": "study"})
        pid = run.info.run_id
        self.runfile.start({"parent_run_id": pid, "experiment_id": self.experiment_id, "study": study, **(launch or {})})
        self.log_params(pid, params)
        return pid

    @property
    def parent_run_id(self) -> str | None:
        return self.runfile.read().get("parent_run_id")

    def mark_interrupted(self) -> int:
        """Child runs left RUNNING by a killed driver become KILLED (they are resumed as
        RUNNING again if Tune restarts their trial)."""
        n = 0
        for run_id in self.runfile.read().get("trials", {}).values():
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

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def log_artifact_json(self, run_id: str, name: str, data: Any) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.client.log_artifact(run_id, str(p))

    def finish_parent(self, status: str = "FINISHED") -> None:
        pid = self.parent_run_id
        if pid:
            self.client.set_terminated(pid, status)

    def log_certification(self, stage: str, trial_id: str, result: Mapping[str, Any], files: list[Path],
                          tags: Mapping[str, str]) -> str | None:
        """A certified trial's test-split numbers: a child run of the trial's own run (named
        ``certify-<trial>``) with them as metrics, the protocol's budgets as params and the
        certification's files; the trial's run gets the same metrics. Idempotent per trial."""
        key = trial_key(stage, trial_id)
        trial_run = self.runfile.trial_run_id(key)
        if trial_run is None:
            return None
        cert_key = f"certify:{key}"
        run_id = self.runfile.trial_run_id(cert_key)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"certify-{stage}-{trial_id}", tags={
                **tags, "mlflow.parentRunId": trial_run, "kind": "certification", "stage": stage, "trial_id": trial_id,
                "split": "test"})
            run_id = run.info.run_id
            self.runfile.set_trial_run_id(cert_key, run_id)
        numbers = metric_items(result)
        settings = {k: v for k, v in result.items() if k in SETTINGS and v is not None}
        flags = result.get(f"{TEST}masking_flags")
        for rid in (run_id, trial_run):
            self.log_metrics(rid, numbers)
            self.log_params(rid, settings)
            if flags is not None:
                self.client.set_tag(rid, "test_masking_flags", ",".join(flags) or "none")
        for f in files:
            self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


class MLflowTrialCallback(tune.Callback):
    """Creates a child run per trial, logs per-epoch metrics, the final result (its screening on
    validation), tags and artifacts, and ends the run with the trial's real status."""

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

    def run_id(self, trial) -> str | None:
        """The trial's MLflow run (read from the run file once, then remembered: it never changes)."""
        key = trial_key(self.stage, trial.trial_id)
        if key not in self._run_ids:
            runfile = self.tracker.runfile
            run_id = runfile.trial_run_id(key)
            if run_id is None:
                train_run = self.resumes.get(config_key(trial.config))
                run_id = train_run and runfile.trial_run_id(trial_key(self.stage, train_run.removeprefix(TRAIN_RUN_PREFIX)))
                if not run_id:
                    return None
                runfile.set_trial_run_id(key, run_id)
            self._run_ids[key] = run_id
        return self._run_ids[key]

    def config(self, trial) -> dict[str, Any]:
        """The trial's config as its worker resolved and reported it; before the first report
        (or for a trial that failed before one), the config it was given."""
        reported = (trial.last_result or {}).get("resolved_config")
        return json.loads(reported) if reported else trial_config(self.base, trial.config, self.refs)

    def _describe(self, run_id: str, cfg: Mapping[str, Any]) -> None:
        self.tracker.client.set_tag(run_id, "model", str(cfg.get("model")))
        self.tracker.client.set_tag(run_id, "dataset", str(cfg.get("dataset")))
        self.tracker.log_params(run_id, cfg)

    def on_trial_start(self, iteration, trials, trial, **info):
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is not None:
            client.update_run(run_id, "RUNNING")
            client.set_tag(run_id, "trial_status", TrialStatus.RUNNING.value)
            return
        cfg = self.config(trial)  # as given: the resolved config follows with the first result
        searched = searched_values(trial.config)
        searched.pop("case", None)
        tags = {**self.tags, "mlflow.parentRunId": self.parent, "study": self.study, "stage": self.stage,
                "trial_id": trial.trial_id, "method": str(cfg.get("method")), "trial_status": TrialStatus.RUNNING.value,
                "searched_params": ",".join(short_name(k) for k in searched)}
        run = client.create_run(self.tracker.experiment_id, run_name=f"{self.stage}-{trial.trial_id}", tags=tags)
        self.tracker.runfile.set_trial_run_id(trial_key(self.stage, trial.trial_id), run.info.run_id)
        self._run_ids[trial_key(self.stage, trial.trial_id)] = run.info.run_id
        # the searched values under the names a person reads (alpha, gamma_beta), beside the dotted config
        self.tracker.log_params(run.info.run_id, {short_name(k): v for k, v in searched.items()})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        if run_id is None:
            return
        if result.get("resolved_config") and trial.trial_id not in self._described:
            self._described.add(trial.trial_id)
            self._describe(run_id, json.loads(result["resolved_config"]))
            if result.get("precision"):  # what the training forwards ran in (fast.amp=auto decides per method)
                self.tracker.log_params(run_id, {"precision": result["precision"]})
        settings = {k: result[k] for k in SETTINGS if k in result and k != "resumed_from_epoch"}
        if settings:
            self.tracker.log_params(run_id, settings)
        if result.get("resumed_from_epoch"):
            self.tracker.client.set_tag(run_id, "resumed_from_epoch", str(result["resumed_from_epoch"]))
        step = int(result.get("epoch", result.get("training_iteration", 0)) or 0)
        self.tracker.log_metrics(run_id, metric_items(result), step)

    def _finish(self, trial, status: TrialStatus, error: str | None = None) -> None:
        client = self.tracker.client
        run_id = self.run_id(trial)
        if run_id is None:
            return
        client.set_tag(run_id, "trial_status", status.value)
        last = trial.last_result or {}
        if last.get(f"{VAL}masking_flags") is not None:
            client.set_tag(run_id, "val_masking_flags", ",".join(last[f"{VAL}masking_flags"]) or "none")
        try:
            cfg = self.config(trial)
            if trial.trial_id not in self._described:  # failed before its first report
                self._describe(run_id, cfg)
            self.tracker.log_artifact_json(run_id, "config.json", cfg)
            ck = last.get("checkpoint_path")
            if ck:
                client.set_tag(run_id, "checkpoint", str(Path(ck, CHECKPOINT_FILE)))
            if ck and Path(ck, EVAL_FILE).exists():
                client.log_artifact(run_id, str(Path(ck, EVAL_FILE)))
            if ck and Path(ck, CHECKPOINT_FILE).exists() and Path(ck, CHECKPOINT_FILE).stat().st_size <= CHECKPOINT_ARTIFACT_MAX:
                client.log_artifact(run_id, str(Path(ck, CHECKPOINT_FILE)))
            if error:
                self.tracker.log_artifact_json(run_id, "error.json", {"error": error})
        finally:
            client.set_terminated(run_id, status.mlflow)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, completed_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        cause = trial_error(trial)
        if self.run_id(trial) is not None:
            self.tracker.client.set_tag(self.run_id(trial), "error", cause)
        self._finish(trial, TrialStatus.FAILED, error=cause)
