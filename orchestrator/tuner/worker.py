"""The Ray Train worker loop: trainables' per-epoch loop with Ray's hooks.

Every rank calls ``ray.train.report`` once per epoch; rank 0 attaches the checkpoint (model,
optimizer, method state such as SPROUT's beta, epoch, config). A restarted worker group
resumes from ``ray.train.get_checkpoint()``, or from the one before it when that one is
unusable; an epoch is safe to re-run because its data order depends only on (seed, epoch).
The last epoch's report also carries the final result (rank 0): the screening evaluation on
the validation split when the trial has one (what a search selects on), the method's own
results and the timings. Nothing here reads the test split: the finalists are certified on it
after training, by ``orchestrator.certify``, and the worker group is released before that. A
NaN or infinite loss ends the run with ``status: diverged``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.checkpoint import CHECKPOINT_FILE, EVAL_FILE
from trainables.files import write_json

from ..record import TrialStatus, console_say
from ..study import VAL, under, val_name
from .trace import stamp

logger = logging.getLogger(__name__)
MAX_LIST = 64  # longer lists (per-image data) stay in eval.json, not in Tune's results


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """What Tune gets: numbers, strings, flags and short lists (curves, masking flags)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= MAX_LIST:
            out[k] = list(v)
    return out


_said_cpu_fallback = False


def worker_device(assigned):
    """Ray's device for this worker, or the CPU when Ray assigned a GPU that torch cannot use
    (the node advertises one, CUDA is absent): said once per worker process, in its log."""
    global _said_cpu_fallback
    import torch

    if assigned.type != "cuda" or torch.cuda.is_available():
        return assigned
    if not _said_cpu_fallback:
        _said_cpu_fallback = True
        logger.warning(
            "this node advertises a GPU (%s) but CUDA is not available to torch: training on CPU with gloo",
            os.environ.get("CUDA_VISIBLE_DEVICES", "?"),
        )
    return torch.device("cpu")


def _checkpoint_candidates(latest):
    """The latest checkpoint, then the run's earlier ones, newest first (Ray names them by time)."""
    import pyarrow.fs
    import ray.train

    parent, name = latest.path.rstrip("/").rsplit("/", 1)
    try:
        infos = latest.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    except OSError:
        infos = []
    earlier = sorted(
        (
            i.base_name
            for i in infos
            if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_") and i.base_name < name
        ),
        reverse=True,
    )
    return [latest] + [ray.train.Checkpoint(f"{parent}/{n}", filesystem=latest.filesystem) for n in earlier]


def load_resume_state(latest, say=None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(training state, saved final evaluation or None) from the latest checkpoint Ray hands a
    restarted worker group; a truncated or foreign one is said in the log and the previous one
    is used. None usable is one clear error naming the latest."""
    from trainables.checkpoint import load_checkpoint
    from trainables.errors import CheckpointError

    first_error = None
    for ckpt in _checkpoint_candidates(latest):
        with ckpt.as_directory() as d:
            try:
                state = load_checkpoint(os.path.join(d, CHECKPOINT_FILE))
                saved = (
                    json.loads(Path(d, EVAL_FILE).read_text()) if os.path.exists(os.path.join(d, EVAL_FILE)) else None
                )
            except (CheckpointError, ValueError) as e:
                first_error = first_error or e
                logger.warning("checkpoint %s is unusable (%s): trying the one before it", ckpt.path, e)
                continue
        if ckpt is not latest:
            logger.warning("resuming from %s instead of the unusable latest checkpoint %s", ckpt.path, latest.path)
            if say is not None:
                say(f"latest checkpoint unusable ({first_error}); resuming from the one before it")
        return state, saved
    raise CheckpointError(f"no usable checkpoint to resume from in {latest.path.rsplit('/', 1)[0]}: {first_error}")


@dataclass
class Trial:
    """One worker's view of its trial: the built components and what every report carries."""

    config: dict[str, Any]  # the driver's train_loop_config
    cfg: Any  # the resolved TrainConfig
    comp: Any  # trainables.loop.Components
    rank: int
    device_label: str
    node_id: str
    start_epoch: int
    saved_eval: dict[str, Any] | None  # the screening of a run that finished before a crash
    data_inputs: str = ""  # its splits as MLflow dataset inputs (JSON), made once: the driver logs them

    def say(self, what: str):
        return console_say(self.config.get("console"), self.config.get("label", ""), what)


def setup(config: dict[str, Any]) -> Trial:
    """Resolve the config, pick the device, restore the latest usable checkpoint, build."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from trainables.config import resolve
    from trainables.data import split_inputs
    from trainables.loop import build

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    cfg = resolve(config["train"])  # the one resolution of this trial's config; reported with every result
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    assigned = ray.train.torch.get_device()
    device = worker_device(assigned)
    resume, saved_eval = None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume, saved_eval = load_resume_state(
            ckpt, console_say(config.get("console"), config.get("label", ""), "resume") if rank == 0 else None
        )
    prepare = ray.train.torch.prepare_model if ctx.get_world_size() > 1 and device.type == "cuda" else None
    comp = build(cfg, device=device, resume=resume, prepare_model=prepare)
    label = device.type if device.type == assigned.type else f"{device.type} (GPU advertised, CUDA unavailable)"
    inputs = json.dumps(split_inputs(comp.bundle))
    return Trial(
        config, cfg, comp, rank, label, ray.get_runtime_context().get_node_id(), comp.start_epoch, saved_eval, inputs
    )


def screening(t: Trial) -> dict[str, Any]:
    """The screening evaluation on the validation split (its full result, unprefixed): what a
    search selects on. Empty without a validation split."""
    from trainables.evaluation import evaluate, get_protocol

    if t.saved_eval is not None:
        return t.saved_eval  # the run finished before a crash lost its last report: not again
    if not t.comp.bundle.has_val:
        return {}
    return evaluate(
        t.comp.net,
        t.comp.bundle.as_test_of_validation(),
        get_protocol(t.config.get("screen", "screen")),
        eps=t.cfg.eps,
        seed=t.cfg.seed,
        device=t.comp.device,
        log=t.say("val"),
    )


def final_result(t: Trial, screened: dict[str, Any]) -> dict[str, Any]:
    """What the last epoch's report adds (rank 0): the screening under validation names, its
    masking details, the method's own results, the steady-state timings."""
    out = under(VAL, screened)
    out[val_name("masking_details")] = [
        f"{n}: {screened['masking_checks'][n]['detail']}"
        for n in screened.get("masking_flags", [])
        if n in screened.get("masking_checks", {})
    ]
    for name, seconds in (screened.get("attack_seconds") or {}).items():  # MLflow: val/seconds/<attack>
        out[f"{VAL}seconds/{name.replace('@', '_at_')}"] = seconds
    out.update(t.comp.method.final_metrics())
    history = t.comp.history
    # the first epoch carries start-up costs (allocation, compilation): leave it out when we can
    steady = history[1:] if len(history) > 1 else history
    out["mean_epoch_time_s"] = sum(h["epoch_time_s"] for h in steady) / len(steady)
    out["mean_images_per_s"] = sum(h["images_per_s"] for h in steady) / len(steady)
    out["total_monitor_time_s"] = sum(h.get("monitor_time_s", 0.0) for h in history)  # every epoch's monitor
    out.update(mean_utilisation(steady))
    out["final"] = True
    return out


def mean_utilisation(history: list[dict[str, Any]]) -> dict[str, float]:
    """Over the epochs and the workers: CPU %, GPU utilisation % (where NVML reads one) and the
    share of an epoch spent waiting for the data loader (what the report shows per trial)."""
    out = {}
    for key in ("cpu_percent", "gpu_util"):
        vals = [v for h in history for k, v in h.items() if k.startswith("system/worker_") and k.endswith("/" + key)]
        if vals:
            out[f"mean_{key}"] = sum(vals) / len(vals)
    shares = [
        v / h["epoch_time_s"]
        for h in history
        for k, v in h.items()
        if k.startswith("system/worker_") and k.endswith("/loader_wait_s") and h.get("epoch_time_s")
    ]
    if shares:
        out["mean_loader_wait_share"] = sum(shares) / len(shares)
    return out


def report_epoch(t: Trial, metrics: dict[str, Any], make_state) -> None:
    """Report one epoch (every rank); rank 0 attaches the checkpoint, and after the last epoch
    the final result, whose screening is kept in the checkpoint (``eval.json``)."""
    import ray.train

    from trainables.checkpoint import save_checkpoint
    from trainables.schema import to_dict

    report = {
        **metrics,
        "status": TrialStatus.RUNNING.value,
        "resumed_from_epoch": t.start_epoch,
        "device": t.device_label,
        "resolved_config": json.dumps(to_dict(t.cfg)),
        "node_id": t.node_id,
        "data_inputs": t.data_inputs,  # MLflow's dataset inputs (the driver logs them)
    }  # which machine ran this epoch (it changes when a node is lost)
    screened = None
    if metrics["epoch"] == t.cfg.epochs:
        if t.rank == 0:
            screened = screening(t)
            report.update(final_result(t, screened))
        report["status"] = TrialStatus.COMPLETED.value
    for name in t.config.get("objectives", ()):  # Tune wants the searcher's objectives in every result:
        report.setdefault(name, float("nan"))  # not measured (yet) is NaN, never a stale or a test number
    if make_state is None:
        ray.train.report(_scalars(report))
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(make_state(), Path(d) / CHECKPOINT_FILE)
        if screened is not None:
            write_json(Path(d) / EVAL_FILE, screened)
        ray.train.report(_scalars(report), checkpoint=ray.train.Checkpoint.from_directory(d))


def report_divergence(t: Trial, epoch: int, loss: float) -> None:
    import ray.train

    from trainables.schema import to_dict

    nan = float("nan")
    # the searcher's objectives exist in every trial's last result: NaN here (Optuna: a failed trial)
    ray.train.report(
        {
            **{name: nan for name in t.config.get("objectives", ())},
            "status": TrialStatus.DIVERGED.value,
            "resolved_config": json.dumps(to_dict(t.cfg)),
            "epoch": epoch,
            "loss": loss if math.isfinite(loss) else nan,
            "diverged": True,
        }
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    stamp("worker")
    from trainables.errors import DivergedError
    from trainables.loop import checkpoint_state, fit

    t = setup(config)
    comp, cfg = t.comp, t.cfg
    stamp("built")
    try:
        if comp.start_epoch >= cfg.epochs and comp.history:
            # restored from the final checkpoint (a driver crash can lose the last report in
            # flight): report the final result again instead of ending without one
            report_epoch(
                t, dict(comp.history[-1]), (lambda: checkpoint_state(comp, cfg.epochs)) if t.rank == 0 else None
            )
        else:
            fit(comp, on_epoch_end=lambda metrics, make_state: report_epoch(t, metrics, make_state))
    except DivergedError as e:
        report_divergence(t, e.epoch, e.loss)
    stamp("worker_end")
