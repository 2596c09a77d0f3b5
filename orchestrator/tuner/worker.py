"""The Ray Train worker loop: trainables' per-epoch loop with Ray's hooks.

Every rank calls ``ray.train.report`` once per epoch; rank 0 attaches the checkpoint (model,
optimizer, method state such as SPROUT's beta, epoch, config). A restarted worker group
resumes from ``ray.train.get_checkpoint()``, or from the one before it when that one is
unusable; an epoch is safe to re-run because its data order depends only on (seed, epoch).
The last epoch's report also carries the final evaluation (rank 0). A NaN or infinite loss
ends the run with ``status: diverged``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from trainables.cli import write_json

from .stages import CHECKPOINT_FILE
from .splits import VAL_PREFIX, val_name

EVAL_FILE = "eval.json"
logger = logging.getLogger(__name__)


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    """What Tune gets: numbers, strings, flags and short lists (curves, masking flags)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 64:
            out[k] = list(v)
    return out


def console_say(config: dict[str, Any], what: str = "eval"):
    """Lines to the sweep's console without waiting for it (the final evaluation's attacks, a
    checkpoint fallback)."""
    console, label = config.get("console"), config.get("label", "")
    if console is None:
        return None
    return lambda line: console.put.remote(f"{label} {what} {line.strip()}")


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
        logger.warning("this node advertises a GPU (%s) but CUDA is not available to torch: training on CPU "
                       "with gloo", os.environ.get("CUDA_VISIBLE_DEVICES", "?"))
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
    earlier = sorted((i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory
                      and i.base_name.startswith("checkpoint_") and i.base_name < name), reverse=True)
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
                saved = json.loads(Path(d, EVAL_FILE).read_text()) if os.path.exists(os.path.join(d, EVAL_FILE)) else None
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from trainables.errors import DivergedError
    from trainables.evaluate import evaluate, load_model_from_checkpoint
    from trainables.loop import build, checkpoint_state, fit
    from trainables.protocols import get_protocol
    from trainables.schema import to_dict
    from trainables.config import resolve

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    cfg = resolve(config["train"])  # the one resolution of this trial's config; reported with every result
    resolved_json = json.dumps(to_dict(cfg))
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    assigned = ray.train.torch.get_device()
    device = worker_device(assigned)
    device_label = device.type if device.type == assigned.type else f"{device.type} (GPU advertised, CUDA unavailable)"
    resume, saved_eval = None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        resume, saved_eval = load_resume_state(ckpt, console_say(config, "resume") if rank == 0 else None)
    comp = build(cfg, device=device, resume=resume, prepare_model=ray.train.torch.prepare_model
                 if ctx.get_world_size() > 1 and device.type == "cuda" else None)
    protocol = get_protocol(config["protocol"], config.get("protocol_overrides") or {})
    start_epoch = comp.start_epoch
    node_id = ray.get_runtime_context().get_node_id()

    def screening() -> dict[str, Any]:
        """The screening evaluation on the validation split, under validation names: what a
        search selects on (the objectives, the finalists). Nothing here reads the test split."""
        if not comp.bundle.has_val:
            return {}
        r = evaluate(comp.net, comp.bundle.as_test_of_validation(), get_protocol(config.get("screen", "screen")),
                     eps=cfg.eps, seed=cfg.seed, device=device, log=console_say(config, "val"))
        keep = ("n_eval", "robust_acc_min_n", "masking_flags", "eval_time_s", "protocol", "curve_eps")
        out = {VAL_PREFIX + k: v for k, v in r.items() if k.endswith("_acc") or k in keep}
        out[val_name("robust_acc")] = r.get("robust_acc_min", float("nan"))
        return out

    def final_evaluation() -> dict[str, Any]:
        if saved_eval is not None:
            r = saved_eval  # the run finished before a crash lost its last report: no re-evaluation
        else:
            source = None
            if config.get("transfer_source"):
                source, _, _ = load_model_from_checkpoint(config["transfer_source"])
            r = {**screening(), **evaluate(comp.net, comp.bundle, protocol, eps=cfg.eps, seed=cfg.seed, device=device,
                                           transfer_source=source, log=console_say(config))}
        out = {k: v for k, v in r.items() if k not in ("protocol_budgets", "masking_checks")}
        out["masking_details"] = [f"{n}: {r['masking_checks'][n]['detail']}" for n in r.get("masking_flags", [])
                                  if n in r.get("masking_checks", {})]
        out["_eval"] = r
        out["robust_acc"] = r.get("robust_acc_min", float("nan"))
        for name, seconds in (r.get("attack_seconds") or {}).items():  # MLflow: seconds/<attack>
            out[f"seconds/{name.replace('@', '_at_')}"] = seconds
        if hasattr(comp.method, "beta"):  # SPROUT: beta at the start and at the end (Figure 4)
            out["beta"] = [round(float(b), 6) for b in comp.method.beta.cpu()]
            out["beta_start"] = [round(float(b), 6) for b in comp.method.beta_start.cpu()]
        times = [h["epoch_time_s"] for h in comp.history]
        # the first epoch carries start-up costs (allocation, compilation): leave it out when we can
        steady = times[1:] if len(times) > 1 else times
        out["mean_epoch_time_s"] = sum(steady) / len(steady)
        out["mean_images_per_s"] = sum(h["images_per_s"] for h in comp.history[-len(steady):]) / len(steady)
        out["final"] = True
        return out

    def on_epoch_end(metrics: dict[str, Any], make_state) -> None:
        report = dict(metrics)
        # the search objective exists in every result: the monitor's numbers per epoch,
        # replaced by the final evaluation after the last epoch. With a validation split the
        # monitor measures it, and its numbers go under validation names only
        name = val_name if comp.bundle.has_val else str
        report[name("clean_acc")] = metrics.get("monitor_clean_acc", float("nan"))
        report[name("robust_acc")] = metrics.get("monitor_pgd_acc", float("nan"))
        report["status"] = "running"
        report["resumed_from_epoch"] = start_epoch  # > 0 after a worker-group restart
        report["device"] = device_label
        report["resolved_config"] = resolved_json
        report["node_id"] = node_id  # which machine ran this epoch (it changes when a node is lost)
        if metrics["epoch"] == cfg.epochs:
            if rank == 0:
                report.update(final_evaluation())
            report["status"] = "completed"
        full_eval = report.pop("_eval", None)
        if make_state is None:
            ray.train.report(_scalars(report))
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(make_state(), os.path.join(d, CHECKPOINT_FILE))
            if full_eval is not None:
                write_json(Path(d) / EVAL_FILE, full_eval)
            ray.train.report(_scalars(report), checkpoint=ray.train.Checkpoint.from_directory(d))

    try:
        if comp.start_epoch >= cfg.epochs and comp.history:
            # restored from the final checkpoint (a driver crash can lose the last report in
            # flight): report the final result again instead of ending without one
            on_epoch_end(dict(comp.history[-1]),
                         (lambda: checkpoint_state(comp, cfg.epochs)) if rank == 0 else None)
        else:
            fit(comp, on_epoch_end=on_epoch_end)
    except DivergedError as e:
        nan = float("nan")
        ray.train.report({"status": "diverged", "resolved_config": resolved_json, "epoch": e.epoch, "loss": nan if not math.isfinite(e.loss) else e.loss,
                          "clean_acc": nan, "robust_acc": nan, val_name("clean_acc"): nan, val_name("robust_acc"): nan,
                          "diverged": True})
