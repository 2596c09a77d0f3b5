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


def torch_config():
    """The trainer's backend config: Ray's Torch process-group set-up, run from a Train
    controller that never imports torch, with the backend following what the workers have
    (``orchestrator/tuner/backend.py``)."""
    from .backend import LazyTorchConfig

    return LazyTorchConfig()


def lean_trainer_class():
    """Ray Train V2's DataParallelTrainer, which TorchTrainer is with Ray's TorchConfig (given
    ``torch_config()`` instead, nothing in the trial's driver imports torch), without the Ray
    Data callback when no Ray Data dataset is passed (as here: each worker loads its own data):
    that callback copies Ray Data's context into every worker, which imports ``ray.data``
    there, for nothing. Ray offers no switch for it, so this overrides the private
    ``_create_default_callbacks`` in this one place; ``tests/test_startup.py`` fails when Ray
    changes it."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    class LeanTrainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return LeanTrainer


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
        backend_config=torch_config(),
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
