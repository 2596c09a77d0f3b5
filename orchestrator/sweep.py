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

from orchestrator.cluster import BOOTSTRAP_CONFIG  # cheap: no torch, no Ray

DEFAULT_STUDY = "sensitivity"
EXIT_ALL_FAILED = 1  # the study ran, wrote its summary, and no trial completed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from trainables.cli import Parser  # cheap: no torch, no Ray

    p = Parser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--verbose", action="store_true", help="show the workers' logs and Ray's, Tune's and Optuna's messages")
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
        from trainables.schema import parse_override, set_nested

        base: dict[str, Any] = {}
        for item in args.set:
            path, value = parse_override(item)
            set_nested(base, path, value)
        out["base"] = base
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help answers before anything heavy is imported
    if args.list:
        from orchestrator.study import list_studies

        studies = list_studies()
        w = max(len(k) for k in studies)
        for name, desc in studies.items():
            print(f"{name:<{w}}  {desc}")
        return 0
    from trainables.cli import writable_dir
    from trainables.errors import ConfigError

    from orchestrator import cluster
    from orchestrator.ledger import plan_fingerprint
    from orchestrator.preflight import check_checkpoints, check_data, pick_output_dir, resumed_launch
    from orchestrator.study import load_raw, parse, plan as make_plan
    from orchestrator.tracking import RUNS_FILE, check_tracking_uri, default_tracking_uri, normalize_uri

    if not args.verbose:  # MLflow announces every table it creates (read when MLflow is imported)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
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
    address = cluster.ray_address(args.address)
    if address:
        cluster.check_address_reachable(address)
    shape = cluster.find_cluster_config(args.cluster_config) if (address or args.cluster_config) else None
    if shape is not None:  # a trial that can never fit is refused before anything runs
        cluster.concurrency(shape, cluster.plan_need(plan.resources), None, [])
    output_dir = pick_output_dir(args, out_name, study.name)
    if args.resume and not (output_dir / RUNS_FILE).exists():
        raise ConfigError(f"--resume: nothing to resume in {output_dir} (no earlier launch of {study.name} there)")
    fingerprint = plan_fingerprint(plan)
    storage_path = args.storage_path and (args.storage_path if "://" in args.storage_path
                                          else str(Path(args.storage_path).expanduser().resolve()))
    if args.resume:
        storage_path = resumed_launch(output_dir / RUNS_FILE, fingerprint, storage_path) or storage_path
    storage_path = storage_path or str(output_dir / "ray")
    multi, why = cluster.is_multi_node(shape, [])
    cluster.check_storage(storage_path, multi_node=multi, declared_shared=args.shared_storage, where=why)
    created = [d for d in (output_dir, None if "://" in storage_path else Path(storage_path).expanduser().resolve())
               if d is not None and not d.exists()]
    output_dir = writable_dir(output_dir, private=True)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    check_tracking_uri(tracking_uri)
    if "://" not in storage_path:
        storage_path = str(writable_dir(storage_path, "--storage-path"))

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import ray

    from orchestrator import interrupts, reports
    from orchestrator.search import run_stage
    from orchestrator.stages import resolve_refs_for
    from orchestrator.summary import table, write_summary
    from orchestrator.tracking import Tracker, console_lines, provenance

    if not args.verbose:  # Optuna announces every study it creates
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        cluster.start_ray(address, verbose=args.verbose,
                          temp_dir=None if address else cluster.ray_temp_dir(output_dir))
        # before anything is logged: the cluster as it is now, and (bounded) waiting for it to grow
        if shape is None:
            multi, why = cluster.is_multi_node(None, cluster.alive_nodes())
            cluster.check_storage(storage_path, multi_node=multi, declared_shared=args.shared_storage, where=why)
        driver = cluster.driver_resources()
        need = cluster.plan_need(plan.resources, driver)
        cluster.wait_for_first_trial(need, args.resource_timeout)
        cap = cluster.concurrency(shape, need, plan.resources.max_concurrent_trials, cluster.alive_node_resources())
        console = console_lines()
    except BaseException:
        ray.shutdown()
        for d in created:  # nothing half-written by a launch that never started
            shutil.rmtree(d, ignore_errors=True)
        raise
    interrupts.install()  # Ctrl-C / SIGTERM: the study stops, its runs say KILLED, exit 130 / 143
    tags = provenance()
    tracker = Tracker(tracking_uri, study.name, output_dir)
    parent = tracker.start_parent(study.name, {"study_file": source, "smoke_test": args.smoke_test,
                                               "seed": plan.seed, "resources": plan.resources.__dict__,
                                               "stages": [s.name for s in plan.stages]},
                                  {**tags, "description": study.description[:500]}, resume=args.resume,
                                  launch={"plan": fingerprint, "storage_path": storage_path})

    rows: list[dict] = []
    refs: dict[str, str] = {}
    t0 = time.time()
    try:
        for stage in plan.stages:
            refs = resolve_refs_for(stage, rows, refs)
            rows += run_stage(stage, plan, storage_path=storage_path, tracker=tracker, parent_run_id=parent,
                              refs=refs, cap=cap, tags=tags, driver_resources=driver,
                              console=console)
            if interrupts.received():  # Tune stopped gracefully and returned: not a finished study
                raise interrupts.Interrupted(interrupts.received())
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
    except (KeyboardInterrupt, interrupts.Interrupted) as e:
        signum = interrupts.received() or signal.SIGINT
        tracker.mark_interrupted()
        tracker.finish_parent("KILLED")
        ray.shutdown()
        print(f"interrupted ({signal.Signals(signum).name}): no summary written; continue with --resume "
              f"--output-dir {output_dir}", file=sys.stderr)
        return getattr(e, "exit_code", 128 + signum)
    except BaseException:
        tracker.mark_interrupted()
        tracker.finish_parent("FAILED")
        raise
    finally:
        ray.shutdown()
    print()
    print(table(rows))
    print(f"\nwrote {jpath}, {cpath}" + (f" and {len(report_files)} report file(s)" if report_files else ""))
    if tracking_uri.startswith("sqlite"):
        print(f"open the MLflow UI:  {mlflow_ui_command(tracking_uri)}")
        # the UI's start page is MLflow's GenAI overview; the study's trials are in its runs table
        print(f"  then http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs (the study's training runs)")
    else:
        print(f"MLflow: {tracking_uri.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs")
    if rows and all(r["status"] == "failed" for r in rows):
        print(f"error: every trial failed (first: {rows[0].get('error', 'no cause recorded')})", file=sys.stderr)
        return EXIT_ALL_FAILED
    return 0


def mlflow_ui_command(tracking_uri: str) -> str:
    """A command that works pasted into a new shell: this interpreter's own MLflow (no venv to
    activate), bound to 127.0.0.1."""
    return f"{sys.executable} -m mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def cli() -> None:
    from trainables.cli import run_main

    run_main(lambda: main())


if __name__ == "__main__":
    cli()
