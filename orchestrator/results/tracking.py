"""MLflow: one parent run per study launch, one child run per trial, and under each certified
trial's run a child run of its certification on the test split.

Every MLflow write happens in the sweep (Tune driver) process, through a Tune callback for the
trials (``orchestrator.results.callbacks``), so a SQLite store has a single writer and Tune's view of a trial (finished, stopped,
diverged, failed) is what MLflow records: no trial run is left RUNNING. Runs interrupted by a
killed driver are marked KILLED when the study is resumed; a trial run again goes on in its old
run. The run ids live in the launch file (``orchestrator.record``).
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.checkpoint import CHECKPOINT_FILE
from trainables.files import index_digest
from trainables.schema import flatten

from ..record import LaunchFile, trial_key
from ..study import NOT_METRICS, SETTINGS, TEST

REGISTERED_NUMBERS = ("clean_acc", "robust_acc", "autoattack_acc", "pgd20_acc", "n_eval", "robust_acc_min_n")
CHECKPOINT_ARTIFACT_MAX = 50 * 2**20  # a final checkpoint up to this size is also logged as an artifact


def provenance() -> dict[str, str]:
    """Git commit and package versions: where a run came from."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parents[2]
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
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


class StoreWarmup:
    """Open a new SQLite MLflow store in a thread, so that it overlaps Ray's start: creating one
    runs MLflow's schema migrations, about 3 s on 2 cores, while ``ray.init`` mostly waits for
    Ray's own processes. MLflow keeps the store it opened for the URI, so the ``Tracker`` built
    after ``wait()`` uses it; a failure here is left for the ``Tracker`` to raise in its own
    words. A store that exists, or a server's URI, has nothing to warm: no thread."""

    def __init__(self, uri: str):
        import threading

        self.db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        self.thread = None
        if self.db is not None and not self.db.exists():
            self.thread = threading.Thread(target=self._open, args=(uri,), name="mlflow-store", daemon=True)
            self.thread.start()

    @staticmethod
    def _open(uri: str) -> None:
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri)
        except Exception:  # noqa: BLE001 - the Tracker opens it again and says what is wrong
            pass

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def undo(self) -> None:
        """After a launch that never started: wait for the thread and remove the store it made."""
        self.wait()
        if self.thread is not None:  # only a store of its own: a thread runs for a new SQLite file alone
            self.db.unlink(missing_ok=True)


class Tracker:
    """MLflow bookkeeping of one study launch (or its resumption): the experiment, the parent
    run, parameters, metrics and artifacts."""

    def __init__(self, uri: str, study: str, output_dir: Path, launch_file: LaunchFile):
        self.uri = uri
        self._client = None
        self.output_dir = output_dir
        self.launch_file = launch_file
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

    def start_parent(
        self,
        study: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        resume: bool,
        launch: Mapping[str, Any] | None = None,
    ) -> str:
        """The study's parent run: a new one, or on ``--resume`` the launch's own. ``launch``
        (its plan fingerprint and storage path) is kept in the launch file for later resumes."""
        pid = self.launch_file.read().get("parent_run_id")
        if resume and pid:
            self.client.update_run(pid, "RUNNING")
            self.mark_interrupted()
            return pid
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{study}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={**tags, "study": study, "kind": "study"},
        )
        pid = run.info.run_id
        self.launch_file.start(
            {"parent_run_id": pid, "experiment_id": self.experiment_id, "study": study, **(launch or {})}
        )
        self.log_params(pid, params)
        return pid

    @property
    def parent_run_id(self) -> str | None:
        return self.launch_file.read().get("parent_run_id")

    def mark_interrupted(self) -> int:
        """Child runs left RUNNING by a killed driver become KILLED (they are resumed as
        RUNNING again if Tune restarts their trial)."""
        n = 0
        for run_id in self.launch_file.read().get("trials", {}).values():
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
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_artifact_json(self, run_id: str, name: str, data: Any) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.client.log_artifact(run_id, str(p))

    def log_paper(self, rows: list[Mapping[str, Any]]) -> int:
        """The paper's numbers beside ours on each trial's run (``paper/<metric>``, our units);
        how many runs got them."""
        n = 0
        for r in rows:
            if r.get("paper") and r.get("mlflow_run_id"):
                self.log_metrics(r["mlflow_run_id"], {f"paper/{k}": v for k, v in r["paper"].items()})
                n += 1
        return n

    def finish_parent(self, status: str = "FINISHED") -> None:
        pid = self.parent_run_id
        if pid:
            self.client.set_terminated(pid, status)

    def checkpoint_run(
        self, stage: str, name: str, config: Mapping[str, Any], parent: str, tags: Mapping[str, str]
    ) -> str:
        """The MLflow run of an evaluation stage's checkpoint (a child of the study's run, named
        ``<stage>-<name>``): created once, found again on a resume."""
        key = trial_key(stage, name)
        run_id = self.launch_file.trial_run_id(key)
        if run_id is not None:
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{stage}-{name}",
            tags={**tags, "mlflow.parentRunId": parent, "stage": stage, "trial_id": name, "kind": "checkpoint",
                  "checkpoint": str(config.get("init_checkpoint")), "model": str(config.get("model")),
                  "dataset": str(config.get("dataset")), "trial_status": "completed"},
        )  # fmt: skip
        run_id = run.info.run_id
        self.launch_file.set_trial_run_id(key, run_id)
        self.log_params(run_id, config)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def log_inputs(self, run_id: str, inputs: list[dict]) -> None:
        """Dataset inputs of a run (``mlflow.log_input``'s records): per split its name, size and
        the digest of its image indices, with the split as the input's context."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        items = [
            DatasetInput(
                Dataset(name=i["name"], digest=i["digest"], source_type="local",
                        source=json.dumps({"uri": i["name"].rsplit("-", 1)[0]}), profile=json.dumps({"num_rows": i["size"]})),
                tags=[InputTag("mlflow.data.context", i["context"])],
            )
            for i in inputs
        ]  # fmt: skip
        self.client.log_inputs(run_id, datasets=items)

    def register(
        self, stage: str, trial_id: str, run_id: str, certification_run: str, result: Mapping[str, Any]
    ) -> None:
        """A certified finalist as a version of the study's registered model (the MLflow UI's
        Models page), its source the checkpoint its run holds, tagged with its test numbers and
        its certification run. Once per trial (a resume does not register it again)."""
        key = f"model:{trial_key(stage, trial_id)}"
        if self.launch_file.trial_run_id(key) is not None:
            return
        name = self.client.get_experiment(self.experiment_id).name
        if not self.client.search_registered_models(f"name = '{name}'"):
            self.client.create_registered_model(name, description=f"certified finalists of the study {name}")
        tags = {"stage": stage, "trial_id": trial_id, "certification_run": certification_run}
        tags |= {k: str(v) for k, v in result.items() if k.startswith(TEST) and isinstance(v, (int, float)) and not isinstance(v, bool)
                 and k.split("/", 1)[1] in REGISTERED_NUMBERS}  # fmt: skip
        run = self.client.get_run(run_id)
        has_file = any(a.path == CHECKPOINT_FILE for a in self.client.list_artifacts(run_id))
        source = (
            f"runs:/{run_id}/{CHECKPOINT_FILE}" if has_file else run.data.tags.get("checkpoint", run.info.artifact_uri)
        )
        mv = self.client.create_model_version(name, source=source, run_id=run_id, tags=tags)
        self.launch_file.set_trial_run_id(key, str(mv.version))

    def log_certification(
        self, stage: str, trial_id: str, result: Mapping[str, Any], files: list[Path], tags: Mapping[str, str]
    ) -> str | None:
        """A certified trial's test-split numbers: a child run of the trial's own run (named
        ``certify-<trial>``) with them as metrics, the protocol's budgets as params and the
        certification's files; the trial's run gets the same metrics. Idempotent per trial."""
        key = trial_key(stage, trial_id)
        trial_run = self.launch_file.trial_run_id(key)
        if trial_run is None:
            return None
        cert_key = f"certify:{key}"
        run_id = self.launch_file.trial_run_id(cert_key)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"certify-{stage}-{trial_id}",
                tags={
                    **tags,
                    "mlflow.parentRunId": trial_run,
                    "kind": "certification",
                    "stage": stage,
                    "trial_id": trial_id,
                    "split": "test",
                },
            )
            run_id = run.info.run_id
            self.launch_file.set_trial_run_id(cert_key, run_id)
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
        n = result.get(f"{TEST}n_eval")
        if n:  # the test images it was certified on: the first n of the test split
            dataset = str(result.get(f"{TEST}dataset", "data"))
            self.log_inputs(run_id, [{"context": "test", "name": f"{dataset}-test", "size": int(n),
                                      "digest": index_digest(range(int(n)))}])  # fmt: skip
        self.client.set_terminated(run_id, "FINISHED")
        self.register(stage, trial_id, trial_run, run_id, result)
        return run_id
