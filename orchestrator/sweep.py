"""Run a study: Ray Tune + Optuna over Ray Train trials, tracked in MLflow.

    python orchestrator/sweep.py                          # the sensitivity study on digits, locally
    python orchestrator/sweep.py --study width --smoke-test
    python orchestrator/sweep.py --config my_study.yaml --num-workers 2
    python orchestrator/sweep.py --study width --resume   # continue an interrupted study
    ray submit cluster/gpu.yaml orchestrator/sweep.py -- --study width

This file runs as a plain script (``ray submit`` copies it alone to the head node): it
imports the installed package and finds study files through it. Every input is validated
before Ray starts; bad input is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_STUDY = "sensitivity"
# Per-trial drivers hold one unit of this custom resource instead of a CPU sliver, so that
# trial worker groups pack onto whole CPUs/GPUs. Local runs define it; cluster files give it
# to the head node. Without it, drivers take 0.01 CPU and the concurrency cap counts that.
DRIVER_RESOURCE = "sweep_driver"
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # left on the head node by `ray up`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--study", default=None, help=f"a study under search_spaces/ (default: {DEFAULT_STUDY})")
    g.add_argument("--config", default=None, help="your own study file")
    p.add_argument("--list", action="store_true", help="list every study with a one-line description")
    p.add_argument("--smoke-test", action="store_true", help="seconds per trial on digits, every part of the path kept")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study from its storage path")
    p.add_argument("--output-dir", default=None, help="default: runs/STUDY (runs/STUDY-smoke with --smoke-test)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under --output-dir)")
    p.add_argument("--storage-path", default=None, help="Ray storage for checkpoints (default: OUTPUT_DIR/ray; "
                                                        "shared storage on multi-node clusters)")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (DDP ranks) per trial")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--max-concurrent-trials", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None, help="Optuna trials (or grid repeats) per stage")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config key in every stage, e.g. data.root=/mnt/imagenet")
    p.add_argument("--skip-data-check", action="store_true",
                   help="do not check data roots on this node (data only on the workers)")
    c = p.add_argument_group("cluster")
    c.add_argument("--address", default=None,
                   help="join this Ray cluster (default: $RAY_ADDRESS; on a `ray up` head node, its cluster; "
                        "otherwise a private local Ray)")
    c.add_argument("--cluster-config", default=None,
                   help="the cluster launcher YAML, to know what the cluster can grow to "
                        f"(default: {BOOTSTRAP_CONFIG} when present, as on a `ray up` head node)")
    c.add_argument("--resource-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="how long to wait for the cluster to provide the first trial's resources (default 900)")
    c.add_argument("--shared-storage", action="store_true",
                   help="declare --storage-path a file system every node shares (an NFS mount this "
                        "sweep does not recognise)")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("num_workers", "gpus_per_worker", "max_concurrent_trials", "num_samples", "seed"):
        v = getattr(args, key)
        if v is not None:
            out[key] = v
    if args.set:
        from trainables.config import parse_override, set_nested

        base: dict[str, Any] = {}
        for item in args.set:
            path, value = parse_override(item)
            set_nested(base, path, value)
        out["base"] = base
    return out


def check_data(plan) -> None:
    """A missing data root fails here, before Ray starts."""
    from trainables.data import get_dataset
    from trainables.errors import DataError
    from trainables.settings import resolve

    from orchestrator.study import _strip_refs

    seen = set()
    for stage in plan.stages:
        cfg = resolve(_strip_refs(stage.base))
        key = (cfg.dataset, cfg.data.root)
        if key in seen or cfg.dataset == "digits":
            continue
        seen.add(key)
        root = Path(cfg.data.root or "./data").expanduser().resolve()
        if cfg.dataset == "imagenet" or not cfg.data.download:
            try:
                get_dataset(cfg.dataset, root=cfg.data.root, download=False, image_size=cfg.data.image_size)
            except DataError as e:
                raise DataError(f"stage {stage.name}: {e}") from None
        elif not root.parent.exists():
            raise DataError(f"stage {stage.name}: data.root {root}: its parent directory does not exist")


def check_checkpoints(plan) -> None:
    """Init checkpoints and transfer sources named by path load now (weights_only, matching
    architecture), not hours later on a worker."""
    from trainables.evaluate import load_model_from_checkpoint
    from trainables.loop import build_model
    from trainables.settings import resolve

    from orchestrator.study import STAGE_REF

    for stage in plan.stages:
        ck = stage.base.get("init_checkpoint")
        if isinstance(ck, str) and not ck.startswith(STAGE_REF) and ck != "random":
            build_model(resolve(stage.base))
        src = stage.evaluation.transfer_source
        if src and not src.startswith(STAGE_REF):
            load_model_from_checkpoint(src)


def pick_output_dir(args, name: str) -> Path:
    """An explicit --output-dir holding an earlier launch needs --resume; the default one
    moves on to NAME-2, NAME-3, ... so that re-running the main job never mixes two launches."""
    from trainables.errors import ConfigError

    from orchestrator.tracking import RUNS_FILE

    if args.output_dir:
        out = Path(args.output_dir).expanduser().resolve()
        if (out / RUNS_FILE).exists() and not args.resume:
            raise ConfigError(f"--output-dir {out}: holds an earlier launch of this study; "
                              f"pass --resume to continue it or choose another directory")
        return out
    out = Path("runs", name).resolve()
    if args.resume:
        return out
    i = 1
    while (out / RUNS_FILE).exists():
        i += 1
        out = Path("runs", f"{name}-{i}").resolve()
    return out


def ray_address(args) -> str | None:
    """The cluster to join: --address, $RAY_ADDRESS, or this node's cluster when it is a head
    started by `ray up` (where `ray submit` runs us). None: start a private local Ray, never
    join some other cluster that happens to run on this machine."""
    if args.address:
        return args.address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if Path(BOOTSTRAP_CONFIG).expanduser().is_file():
        return "auto"
    return None


def start_ray(address: str | None) -> None:
    import ray

    from trainables.errors import ConfigError

    # The dashboard (ray[default]) must run: without it a trial that ASHA stops early never
    # releases its worker group's placement group and later trials wait forever. It listens
    # on 127.0.0.1 only.
    kw = dict(include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
              configure_logging=True, logging_level="ERROR")
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(f"Ray address {address}: cannot join ({str(e).splitlines()[0][:200]})") from None
        return
    ray.init(address="local", resources={DRIVER_RESOURCE: 10_000}, **kw)


def driver_resources() -> dict[str, float]:
    import ray

    return {DRIVER_RESOURCE: 1} if ray.cluster_resources().get(DRIVER_RESOURCE) else {"CPU": 0.01}


def trial_need(plan, driver: dict[str, float] | None = None):
    from orchestrator.cluster import trial_need as need

    res = plan.resources
    return need(res.num_workers, res.cpus_per_worker, res.gpus_per_worker, driver)


def _ref_target(ref: str, rows: list[dict]) -> str | None:
    """stage:NAME/key=value[,key=value] -> the final checkpoint file of that stage's trial."""
    from orchestrator.study import STAGE_REF
    from trainables.config import flatten

    body = ref[len(STAGE_REF):]
    stage, _, cond = body.partition("/")
    wanted = dict(c.split("=", 1) for c in cond.split(",") if c)
    for r in rows:
        if r["stage"] != stage or r["status"] != "completed" or not r["checkpoint"]:
            continue
        flat = flatten(r["config"])
        if all(str(flat.get(k)) == v for k, v in wanted.items()):
            return str(Path(r["checkpoint"]) / "checkpoint.pt")
    return None


def _collect_refs(stage) -> set[str]:
    from orchestrator.study import STAGE_REF

    found = set()

    def walk(v):
        if isinstance(v, str) and v.startswith(STAGE_REF):
            found.add(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(stage.base)
    walk(stage.search.params)
    walk(list(stage.search.cases))
    walk(stage.evaluation.transfer_source)
    return found


def run_stage(stage, plan, *, storage_path: str, tracker, parent_run_id: str, refs: dict[str, str],
              cap: int, resume: bool, tags: dict[str, str]) -> list[dict]:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from trainables.config import set_nested, to_dict
    from trainables.settings import resolve

    from orchestrator.driver import run_trial, trial_train_config
    from orchestrator.study import DefineByRun, _strip_refs, default_point, grid_size
    from orchestrator.summary import trial_row
    from orchestrator.tracking import MLflowTrialCallback, Progress
    from trainables.config import flatten

    study = plan.study
    search = stage.search
    specs = search.param_specs(stage.name)
    payload = {"base": stage.base, "resources": to_dict(plan.resources), "storage_path": storage_path,
               "protocol": stage.evaluation.protocol, "protocol_overrides": stage.evaluation.overrides,
               "transfer_source": stage.evaluation.transfer_source, "refs": refs}
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), driver_resources())
    epochs = resolve(_strip_refs(stage.base)).epochs
    scheduler = None
    if search.scheduler.type == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metrics[0], mode=search.modes[0], max_t=epochs,
                                  grace_period=search.scheduler.grace_period,
                                  reduction_factor=search.scheduler.reduction_factor, stop_last_trials=False)
    multi = len(search.metrics) > 1
    if search.algorithm == "optuna":
        sampler = (optuna.samplers.TPESampler(seed=plan.seed) if search.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=plan.seed))
        if multi:
            sampler = (optuna.samplers.NSGAIISampler(seed=plan.seed) if search.sampler == "tpe" else sampler)
        points = [default_point(specs, stage.base)] if search.enqueue_defaults else None
        searcher = OptunaSearch(space=DefineByRun(specs, stage.base),
                                metric=search.metrics if multi else search.metrics[0],
                                mode=search.modes if multi else search.modes[0],
                                points_to_evaluate=points or None, sampler=sampler)
        param_space: dict[str, Any] = {}
        tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=search.num_samples,
                                      max_concurrent_trials=cap)
        total = search.num_samples
    else:
        param_space = {}
        for key, spec in specs.items():
            set_nested(param_space, key.split("."), tune.grid_search(list(spec.values)))
        if search.cases:
            param_space["case"] = tune.grid_search([dict(c) for c in search.cases])
        tune_config = tune.TuneConfig(scheduler=scheduler, num_samples=search.num_samples, max_concurrent_trials=cap)
        total = grid_size(search, specs)
    mlflow_cb = MLflowTrialCallback(tracker, parent_run_id=parent_run_id, stage=stage.name, study=study.name,
                                    base=stage.base, refs=refs, tags=tags)
    callbacks = [mlflow_cb, Progress(stage.name, total)]
    exp_name = f"{study.name}-{stage.name}"
    exp_path = os.path.join(storage_path, exp_name)
    print(f"[{stage.name}] {total} trial(s), up to {cap} at once, {plan.resources.num_workers} worker(s) each", flush=True)
    if resume and tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=param_space or None)
        # callbacks are not taken from the pickled state: they hold this launch's MLflow run
        tuner._local_tuner._run_config.callbacks = callbacks
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=exp_name, storage_path=storage_path,
                                                     callbacks=callbacks, verbose=0))
    grid = tuner.fit()
    rows = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        cfg_searched = dict(result.config or {})
        case = cfg_searched.get("case")
        flat_searched = flatten({k: v for k, v in cfg_searched.items() if k != "case"})
        if case:
            flat_searched = {"case": case["name"], **flat_searched}
        try:
            cfg = to_dict(resolve(trial_train_config(stage.base, cfg_searched, refs)))
        except Exception:  # noqa: BLE001
            cfg = trial_train_config(stage.base, cfg_searched, refs)
        if result.error is not None:
            status = "failed"
        else:
            status = metrics.get("status") or "stopped"
            if status == "running":
                status = "stopped"
        ck = metrics.get("checkpoint_path") or (result.checkpoint.path if result.checkpoint else None)
        run_id = tracker.state.get("trials", {}).get(f"{stage.name}/{trial_id}")
        rows.append(trial_row(study=study.name, stage=stage.name, trial_id=trial_id, config=cfg,
                              searched=flat_searched, metrics=metrics, status=status, mlflow_run_id=run_id,
                              checkpoint=ck, error=str(result.error).splitlines()[0][:300] if result.error else None))
    rows.sort(key=lambda r: r["trial_id"])
    return rows


def main(argv: list[str] | None = None) -> int:
    from trainables.cli import writable_dir
    from trainables.errors import ConfigError

    from orchestrator.cluster import (alive_node_resources, alive_nodes, check_address_reachable, check_storage,
                                      concurrency, find_cluster_config, is_multi_node, wait_for_first_trial)
    from orchestrator.study import list_studies, load_raw, parse, plan as make_plan
    from orchestrator.tracking import check_tracking_uri, default_tracking_uri, normalize_uri

    args = parse_args(argv)
    if args.list:
        studies = list_studies()
        w = max(len(k) for k in studies)
        for name, desc in studies.items():
            print(f"{name:<{w}}  {desc}")
        return 0
    # -- everything below until ray.init is validation: nothing is written on bad input
    raw, source = load_raw(name=args.study or (None if args.config else DEFAULT_STUDY), path=args.config)
    study = parse(raw, source)
    plan = make_plan(study, source, smoke=args.smoke_test, overrides=_overrides(args))
    if not args.skip_data_check:
        check_data(plan)
    check_checkpoints(plan)
    out_name = study.name + ("-smoke" if args.smoke_test else "")
    tracking_uri = normalize_uri(args.tracking_uri) if args.tracking_uri else None
    if tracking_uri and not tracking_uri.startswith("sqlite:"):
        check_tracking_uri(tracking_uri)
    if not args.resource_timeout > 0:
        raise ConfigError(f"--resource-timeout: expected a number of seconds > 0, got {args.resource_timeout:g}")
    address = ray_address(args)
    if address:
        check_address_reachable(address)
    shape = find_cluster_config(args.cluster_config, BOOTSTRAP_CONFIG) if (address or args.cluster_config) else None
    if shape is not None:  # a trial that can never fit is refused before anything runs
        concurrency(shape, trial_need(plan), None, [])
    output_dir = pick_output_dir(args, out_name)
    if args.resume and not (output_dir / "mlflow_runs.json").exists():
        raise ConfigError(f"--resume: nothing to resume in {output_dir} (no earlier launch of {study.name} there)")
    storage_path = args.storage_path or str(output_dir / "ray")
    multi, why = is_multi_node(shape, [])
    check_storage(storage_path, multi_node=multi, declared_shared=args.shared_storage, where=why)
    created = [d for d in (output_dir, None if "://" in storage_path else Path(storage_path).expanduser().resolve())
               if d is not None and not d.exists()]
    output_dir = writable_dir(output_dir)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    check_tracking_uri(tracking_uri)
    if "://" not in storage_path:
        storage_path = str(writable_dir(storage_path, "--storage-path"))

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import ray

    from orchestrator import reports
    from orchestrator.summary import table, write_summary
    from orchestrator.tracking import Tracker, provenance

    try:
        start_ray(address)
        # before anything is logged: the cluster as it is now, and (bounded) waiting for it to grow
        nodes = alive_nodes()
        if shape is None:
            multi, why = is_multi_node(None, nodes)
            check_storage(storage_path, multi_node=multi, declared_shared=args.shared_storage, where=why)
        need = trial_need(plan, driver_resources())
        wait_for_first_trial(need, args.resource_timeout)
        cap = concurrency(shape, need, plan.resources.max_concurrent_trials, alive_node_resources())
    except BaseException:
        ray.shutdown()
        for d in created:  # nothing half-written by a launch that never started
            shutil.rmtree(d, ignore_errors=True)
        raise
    tags = provenance()
    tracker = Tracker(tracking_uri, study.name, output_dir)
    parent = tracker.start_parent(study.name, {"study_file": source, "smoke_test": args.smoke_test,
                                               "seed": plan.seed, "resources": plan.resources.__dict__,
                                               "stages": [s.name for s in plan.stages]},
                                  {**tags, "description": study.description[:500]}, resume=args.resume)

    def on_term(signum, frame):  # a polite kill still closes the MLflow runs
        tracker.mark_interrupted()
        tracker.finish_parent("KILLED")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    rows: list[dict] = []
    refs: dict[str, str] = {}
    t0 = time.time()
    try:
        for stage in plan.stages:
            for ref in _collect_refs(stage):
                target = _ref_target(ref, rows)
                if target is None:
                    raise ConfigError(f"stage {stage.name}: {ref!r} matches no completed trial of an earlier stage")
                refs[ref] = target
            rows += run_stage(stage, plan, storage_path=storage_path, tracker=tracker, parent_run_id=parent,
                              refs=refs, cap=cap, resume=args.resume, tags=tags)
        jpath, cpath = write_summary(output_dir, study.name, rows, {"study_file": source, "smoke_test": args.smoke_test,
                                                                   "mlflow_parent_run_id": parent,
                                                                   "tracking_uri": tracking_uri,
                                                                   "wall_time_s": time.time() - t0})
        report_files = reports.write_report(study, rows, output_dir)
        for path in [jpath, cpath, *report_files]:
            tracker.client.log_artifact(parent, str(path))
        failed = [r for r in rows if r["status"] == "failed"]
        tracker.client.set_tag(parent, "trials", str(len(rows)))
        tracker.client.set_tag(parent, "trials_failed", str(len(failed)))
        tracker.finish_parent("FINISHED")
    except BaseException:
        tracker.mark_interrupted()
        tracker.finish_parent("FAILED")
        raise
    finally:
        ray.shutdown()
    print()
    print(table(rows))
    print(f"\nwrote {jpath}, {cpath}" + (f" and {len(report_files)} report file(s)" if report_files else ""))
    print(f"open the MLflow UI:  mlflow ui --backend-store-uri {tracking_uri}" if tracking_uri.startswith("sqlite")
          else f"MLflow: {tracking_uri}")
    return 0


def cli() -> None:
    from trainables.cli import run_main

    run_main(lambda: main())


if __name__ == "__main__":
    cli()
