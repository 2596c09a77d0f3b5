"""The per-trial driver: a plain Tune function that builds one Ray Train V2 ``TorchTrainer``
and calls ``fit()`` (the V2 pattern; ``Tuner(trainer)`` is deprecated).

The Train run is named after the Tune trial id (``train-<trial_id>``) under the study's
storage path. A trial that ``--resume`` runs again (its driver died or was interrupted) is
given its first Train run's name, so it resumes from that run's last checkpoint instead of
starting over (``orchestrator.tuner.ledger``).
"""

from __future__ import annotations

from typing import Any

from ..record import train_run_name
from ..study import config_key, trial_config
from .trace import controller_callbacks, stamp

AUTO_BACKEND = "auto"  # resolved per worker group when it starts: nccl or gloo


def _cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_config():
    """Ray's TorchConfig, except that the process-group backend follows what the workers
    have: NCCL when every worker sees CUDA, gloo otherwise. A node can advertise a GPU that
    torch cannot use (a simulated cluster, a broken driver); its workers then train on CPU
    (the worker says so) instead of failing to create an NCCL group."""
    from dataclasses import replace

    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend  # Ray's own backend; only its choice of backend changes

    class _AdaptiveBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            if backend_config.backend == AUTO_BACKEND:
                gpus = worker_group.get_resources_per_worker().get("GPU", 0) > 0
                backend = "nccl" if gpus and all(worker_group.execute(_cuda_usable)) else "gloo"
                backend_config = replace(backend_config, backend=backend)
            super().on_start(worker_group, backend_config)

    class AdaptiveTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _AdaptiveBackend

    # a backend TorchTrainer leaves alone (it turns None into "nccl" whenever GPUs are asked for)
    return AdaptiveTorchConfig(backend=AUTO_BACKEND)


def lean_trainer_class():
    """Ray's TorchTrainer without the Ray Data callback when no Ray Data dataset is passed (as
    here: each worker loads its own data): that callback copies Ray Data's context into every
    worker, which imports ``ray.data`` there, for nothing. Ray offers no switch for it, so this
    overrides the private ``_create_default_callbacks`` in this one place;
    ``tests/test_startup.py`` fails when Ray changes it."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTorchTrainer


def run_trial(given: dict[str, Any], *, payload: dict[str, Any]) -> None:
    """One trial: its training config from the searched values it was ``given``, one Train run."""
    stamp("driver")
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .worker import train_loop_per_worker

    trial_id = ray.tune.get_context().get_trial_id()
    train_run = (payload.get("resumes") or {}).get(config_key(given)) or train_run_name(trial_id)
    res = payload["resources"]
    train_cfg = trial_config(payload["base"], given, payload["refs"])
    gpus = float(res["gpus_per_worker"])
    resources = {"CPU": float(res["cpus_per_worker"])}
    if gpus > 0:
        resources["GPU"] = gpus
    trainer = lean_trainer_class()(
        train_loop_per_worker,
        torch_config=torch_config(),
        train_loop_config={
            "train": train_cfg,
            "screen": payload.get("screen", "screen"),
            "objectives": payload.get("objectives", []),
            "threads": max(1, int(res["cpus_per_worker"])),
            "console": payload.get("console"),  # where the screening's per-attack lines go
            "label": f"[{payload.get('stage', 'main')}] trial {trial_id}",
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(res["num_workers"]), use_gpu=gpus > 0, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=train_run,
            storage_path=payload["storage_path"],
            failure_config=ray.train.FailureConfig(max_failures=int(res["max_failures"])),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=int(train_cfg.get("keep_checkpoints", 2))),
            callbacks=[TuneReportCallback(), *controller_callbacks()],
        ),
    )
    stamp("fit", trial_id)
    trainer.fit()
