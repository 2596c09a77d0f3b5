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
    """Ray Train V2's DataParallelTrainer (TorchTrainer is it with Ray's TorchConfig; given
    ``torch_config()`` instead, nothing in the trial's driver imports torch), with two changes to
    what a trial starts, each a private method overridden in this one place
    (``tests/test_startup.py`` fails when Ray changes them):

    - its controller runs in the trial's own process, in the thread that calls ``fit()``, not in
      an actor of its own. Ray always starts one (``_initialize_and_run_controller``); that is a
      fresh Python process per trial importing Ray Train (pandas, ``ray.data``) again, about 2 CPU-s
      and 3 s before the worker group is even asked for. The same ``TrainController`` runs the same
      loop; its worker group, placement group and the placement-group cleaner (which frees an
      ASHA-stopped trial's workers when this process goes) are as before, owned by this process.
      Only in an actor (Tune's for the trial): Ray Train hands its workers the controller's actor
      handle (``current_actor``), which only ``ray.train.get_all_reported_checkpoints`` uses
      (never called here: ``tests/test_startup.py``); called from a driver, Ray's own controller
      actor runs, as in plain Ray Train;
    - without a Ray Data dataset (as here: each worker loads its own data) the Ray Data callback is
      left out: it copies Ray Data's context into every worker, which imports ``ray.data`` there,
      for nothing (``_create_default_callbacks``);
    - at a run's normal end the placement-group cleaner is killed, not stopped and waited for
      (``cleaner_stopped_without_waiting``)."""
    import asyncio

    import ray
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.controller import TrainController
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    cleaner_callback = cleaner_stopped_without_waiting()

    class LeanTrainer(DataParallelTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            callbacks = [cleaner_callback() if isinstance(c, PlacementGroupCleanerCallback) else c for c in callbacks]
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            if ray.get_runtime_context().get_actor_id() is None:  # a driver, not Tune's actor for a trial
                return super()._initialize_and_run_controller(**controller_init_kwargs)
            controller = TrainController(**controller_init_kwargs)
            asyncio.run(controller.run())
            return controller.get_result()

    return LeanTrainer


def cleaner_stopped_without_waiting():
    """Ray Train's placement-group cleaner callback (a detached actor per run that frees the run's
    placement group if its controller dies: an ASHA-stopped trial's), except at the run's normal
    end: Ray waits there for the cleaner to stop, and the cleaner's thread notices only after its
    next check (every second: ``queue.get(timeout=check_interval_s)``), about 0.9 s on every
    trial's end with nothing else to do, and the cleaner's process then leaves through Python's
    exit (a last garbage collection over Ray Train's modules, ~0.3 CPU-s). Here it is killed: by
    then the worker group and its placement group are gone (the controller shuts them down first),
    so nothing is left for it to free. An aborted run stops it as Ray does. Uses the callback's
    private ``_cleaner`` (the actor handle); ``tests/test_startup.py`` fails when Ray changes it."""
    import ray
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    class CleanerStoppedWithoutWaiting(PlacementGroupCleanerCallback):
        async def before_controller_shutdown(self):
            cleaner, self._cleaner = self._cleaner, None
            if cleaner is not None:
                ray.kill(cleaner)

    return CleanerStoppedWithoutWaiting


def start_autoscaling_coordinator() -> None:
    """Ask for the actor every Ray Train controller registers its run's resources with (Ray's
    autoscaling coordinator: one detached actor per cluster, made on first use). The first trial's
    controller would otherwise create it and wait for its process (about 2 s, with nothing else
    to do); asked for before Tune starts, it comes up while Tune sets up. Non-blocking; the same
    private function Ray Train calls (``tests/test_startup.py`` fails when Ray changes it)."""
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client

    autoscaling_coordinator_client.get_or_create_autoscaling_coordinator()


def report_to_tune():
    """A Train callback that hands each report of rank 0 (its metrics, and its checkpoint's path
    under ``checkpoint_path``) to the trial's Tune session, as Ray's ``TuneReportCallback`` does
    but without its queue actor: that callback runs in a separate controller process, so it
    needs one (another process per trial); the lean trainer's controller runs in the trial's
    process, in the thread that called ``fit()``, where ``ray.tune.report`` is the plain call."""
    import ray.tune
    from ray.train.v2.api.callback import UserCallback
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    class ReportToTune(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            row = dict(metrics[0])
            if checkpoint:
                row[CHECKPOINT_PATH_KEY] = checkpoint.path
            ray.tune.report(row)

    return ReportToTune()


def run_trial(given: dict[str, Any], *, payload: dict[str, Any]) -> None:
    """One trial: its training config from the searched values it was ``given``, one Train run."""
    stamp("driver")
    import ray.train
    import ray.tune

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
            callbacks=[report_to_tune(), *controller_callbacks()],
        ),
    )
    stamp("fit", trial_id)
    trainer.fit()
    stamp("fit_end", trial_id)
