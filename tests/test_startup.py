"""What a trial starts: Ray Train's trainer with its controller in the trial's own process and
without its Ray Data callback when no Ray Data dataset is passed, Tune told of reports without a
queue actor, Ray's autoscaling coordinator asked for before the first trial, a Torch backend
whose controller never imports torch, and the placement-group cleaner stopped without waiting at
a run's end (private Ray APIs, each wrapped in one place: these tests fail when Ray changes
them), and the start-up trace the benchmark reads."""

import json
import re

from orchestrator.tuner.driver import lean_trainer_class


def callback_types(trainer) -> set[str]:
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def test_the_lean_trainer_drops_only_the_ray_data_callback_and_only_without_datasets():
    from ray.train.torch import TorchTrainer

    def loop(config):
        return None

    plain = callback_types(TorchTrainer(loop))
    assert "DatasetsCallback" in plain and "PlacementGroupCleanerCallback" in plain  # what Ray has today
    lean = callback_types(lean_trainer_class()(loop))
    # the placement-group cleaner stays (ASHA needs it), stopped at a run's end without waiting
    assert lean == plain - {"DatasetsCallback", "PlacementGroupCleanerCallback"} | {"CleanerStoppedWithoutWaiting"}


def test_at_a_runs_end_the_cleaner_is_killed_not_stopped_and_waited_for(monkeypatch):
    """Ray's cleaner callback keeps the cleaner actor's handle in ``_cleaner`` and stops it (and
    waits) in a coroutine hook the controller calls after it has shut the worker group down; ours
    kills the actor (nothing is left for it to free) and returns."""
    import asyncio
    import inspect

    import ray
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.controller import TrainController
    from ray.train.v2._internal.execution.controller.placement_group_cleaner import PlacementGroupCleaner

    from orchestrator.tuner.driver import cleaner_stopped_without_waiting

    assert PlacementGroupCleanerCallback()._cleaner is None and callable(PlacementGroupCleaner.stop)
    assert inspect.iscoroutinefunction(PlacementGroupCleanerCallback.before_controller_shutdown)
    assert "_stop_cleaner" in inspect.getsource(PlacementGroupCleanerCallback.before_controller_shutdown)
    shutdown = inspect.getsource(TrainController._shutdown)
    assert shutdown.index("_shutdown_worker_group()") < shutdown.index('"before_controller_shutdown"')
    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, **kw: killed.append(actor))
    handle = object()
    ours = cleaner_stopped_without_waiting()()
    assert isinstance(ours, PlacementGroupCleanerCallback)
    ours._cleaner = handle
    asyncio.run(ours.before_controller_shutdown())
    assert killed == [handle] and ours._cleaner is None
    asyncio.run(ours.before_controller_shutdown())  # nothing left to kill
    assert killed == [handle]


def test_the_trainer_runs_its_controller_through_the_method_the_lean_trainer_overrides():
    """``fit()`` hands the controller's arguments to ``_initialize_and_run_controller``, which the
    lean trainer overrides to build Ray's ``TrainController`` in its own process: the method is
    called so, with keyword arguments the controller takes, and the controller's loop is a
    coroutine and its result a plain call."""
    import inspect

    from ray.train.v2._internal.execution.controller import TrainController
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    fit = inspect.getsource(DataParallelTrainer.fit)
    call = fit[fit.index("self._initialize_and_run_controller(") :]
    passed = re.findall(r"^\s*(\w+)=", call[: call.index(")\n")], re.M)
    assert passed, fit
    assert set(passed) <= set(inspect.signature(TrainController.__init__).parameters)
    assert inspect.iscoroutinefunction(TrainController.run)
    assert not inspect.iscoroutinefunction(TrainController.get_result)
    assert "_initialize_and_run_controller" in lean_trainer_class().__dict__


def test_nothing_asks_the_train_controller_for_its_checkpoints():
    """In a trial, Ray Train's workers are handed Tune's actor for the trial as their controller's
    handle (the controller runs in it); its only use in Ray Train is
    ``ray.train.get_all_reported_checkpoints``, which no code of ours may call."""
    from helpers import ROOT

    callers = [
        str(f.relative_to(ROOT))
        for d in ("orchestrator", "trainables", "bench")
        for f in (ROOT / d).rglob("*.py")
        if "get_all_reported_checkpoints(" in f.read_text()
    ]
    assert callers == []


def test_the_report_callback_and_the_coordinator_are_what_ray_train_calls():
    """Tune is told of each report by a Train user callback's ``after_report`` (its parameters as
    Ray calls them), and Ray Train's resource requests go to the coordinator the sweep asks for
    before its first trial (the same function, called the same way)."""
    import inspect

    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client as client
    from ray.train.v2.api.callback import UserCallback

    assert list(inspect.signature(UserCallback.after_report).parameters) == [
        "self",
        "run_context",
        "metrics",
        "checkpoint",
    ]
    assert callable(client.get_or_create_autoscaling_coordinator)
    assert not inspect.signature(client.get_or_create_autoscaling_coordinator).parameters
    source = inspect.getsource(client.TrainAutoscalingCoordinatorClient)
    assert "get_or_create_autoscaling_coordinator()" in source


def test_each_report_reaches_tune_as_rank_0s_metrics_with_its_checkpoints_path(monkeypatch):
    import ray.tune

    from orchestrator.tuner.driver import report_to_tune

    told = []
    monkeypatch.setattr(ray.tune, "report", lambda row: told.append(row))
    callback = report_to_tune()

    class Checkpoint:
        path = "/store/train-x/checkpoint_000001"

    rank0 = {"epoch": 1, "val/clean_acc": 0.5}
    callback.after_report(None, [rank0, {"epoch": 1, "val/clean_acc": 0.1}], Checkpoint())
    callback.after_report(None, [{"epoch": 2}], None)
    assert told == [{**rank0, "checkpoint_path": Checkpoint.path}, {"epoch": 2}]
    assert "checkpoint_path" not in rank0  # the worker's own dict is not changed


def test_the_startup_trace_is_written_only_when_asked(tmp_path, monkeypatch):
    from orchestrator.tuner.trace import HEAVY, TRACE_ENV, stamp

    monkeypatch.delenv(TRACE_ENV, raising=False)
    stamp("driver")  # nothing to write to: nothing happens
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    stamp("driver", "t1")
    stamp("built", "t1")
    rows = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [r["what"] for r in rows] == ["driver", "built"] and rows[1]["t"] >= rows[0]["t"] and rows[0]["cpu_s"] > 0
    assert "torch" in rows[0]["loaded"] and set(rows[0]["loaded"]) <= set(HEAVY)  # this test process has torch


def test_the_torch_backend_config_reaches_the_controller_without_torch():
    """What the controller unpickles and calls (the config, its backend class, framework and
    context) imports no torch; the config is what TorchTrainer takes and keeps."""
    import subprocess
    import sys

    code = (
        "import pickle, sys; from orchestrator.tuner.driver import lean_trainer_class, torch_config; "
        "c = pickle.loads(pickle.dumps(torch_config())); c.backend_cls(); c.framework; c.train_func_context; "
        "t = lean_trainer_class()(lambda config: None, backend_config=torch_config()); "
        "print(c.to_dict(), type(t.backend_config).__name__, 'torch' in sys.modules)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # the trial's driver builds its trainer, and the controller gets its config, without torch
    assert p.stdout.strip() == "{'backend': 'auto', 'init_method': 'env', 'timeout_s': 1800} LazyTorchConfig False", (
        p.stdout + p.stderr[-2000:]
    )


def test_rays_worker_side_torch_functions_are_as_the_backend_calls_them():
    """The backend runs Ray's own worker-side functions of ``ray.train.torch.config`` (private):
    their names and parameters, as ``orchestrator/tuner/backend.py`` calls them."""
    import inspect

    from ray.train._internal.utils import get_address_and_port
    from ray.train.torch import config

    assert list(inspect.signature(config._setup_torch_process_group).parameters) == [
        "backend",
        "world_rank",
        "world_size",
        "init_method",
        "timeout_s",
    ]
    assert list(inspect.signature(config._shutdown_torch).parameters) == ["destroy_process_group"]
    assert list(inspect.signature(config._set_torch_distributed_env_vars).parameters) == []
    assert callable(get_address_and_port) and not inspect.signature(get_address_and_port).parameters
    assert config._TorchBackend.share_cuda_visible_devices  # ours shares CUDA devices as Ray's does


def test_a_commands_exit_freezes_its_heap_and_keeps_its_exit_code(monkeypatch):
    """The commands (sweep, train, evaluate) leave through ``exit_now``: the heap frozen, so the
    interpreter's last collection skips what they imported (``bench/orchestration.py`` measures
    it), and the exit code is the command's: 0, its own, 2 on bad input, 3 on divergence, 130 on
    Ctrl-C."""
    import gc
    import sys
    import types

    import pytest

    from trainables.cli import run_main
    from trainables.errors import ConfigError, DivergedError

    def raises(e):
        def fn():
            raise e

        return fn

    cases = [(lambda: None, 0), (lambda: 4, 4), (raises(ConfigError("x")), 2), (raises(DivergedError(2, float("nan"))), 3),
             (raises(KeyboardInterrupt()), 130)]  # fmt: skip
    monkeypatch.delitem(sys.modules, "triton", raising=False)
    try:
        for fn, code in cases:
            gc.unfreeze()
            assert gc.get_freeze_count() == 0
            with pytest.raises(SystemExit) as e:
                run_main(fn)
            assert e.value.code == code and gc.get_freeze_count() > 0
        # with Triton loaded (torch's compiler), a plain exit: nanobind would call the frozen objects leaks
        gc.unfreeze()
        monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
        with pytest.raises(SystemExit) as e:
            run_main(lambda: 5)
        assert e.value.code == 5 and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()  # this process goes on: its objects are collected again
