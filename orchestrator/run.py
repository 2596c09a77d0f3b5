"""A checked launch (``orchestrator.launch``), run: Ray started or joined, the study's parent MLflow
run, then for each stage its trials (Ray Tune over Ray Train) and its finalists' certification on
the test split (Ray tasks), then the summary, the reports and the results table.

Ctrl-C and SIGTERM stop the study at any point: its MLflow runs say KILLED, the sweep exits 130 /
143, and ``--resume`` goes on where it stopped (trials from their checkpoints, certification from
its finished shards).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.evaluation import describe_flags
from trainables.files import with_scheme
from trainables.schema import to_dict

from . import certify as certification
from . import cluster
from .launch import Launch, plan_fields, storage_source
from .record import LaunchFile, TrialStatus, console_lines, stage_records
from .results import (
    MLflowTrialCallback,
    Progress,
    StoreWarmup,
    Tracker,
    add_certification,
    add_intervals,
    add_paper,
    ci,
    paired_tests,
    provenance,
    rows_from_records,
    table,
    trial_row,
    write_report,
    write_summary,
)
from .study import TEST, entry_base, load_paper_numbers, resolve_refs_for, sampler_label, select, substitute
from .tuner import TrialLedger, interrupts, plan_stage, run_stage, run_trial

EXIT_FAILED = 1  # the study ran and wrote its summary, but no trial completed or a certification failed


@dataclass
class Session:
    """What every stage of a running launch shares."""

    launch: Launch
    launch_file: LaunchFile
    tracker: Tracker
    parent: str
    tags: dict[str, str]
    cap: int  # trials at once
    driver: dict[str, float]  # a trial driver's resources
    console: Any  # the mailbox actor for workers' lines
    paper: dict[str, Any]  # the paper's numbers the study puts beside its own (empty without)
    phases: list[dict] = field(default_factory=list)  # each stage's wall and compute seconds (summary.json)


def run(launch: Launch) -> int:
    """Run the launch to its end; the exit code."""
    _quiet(launch.args.verbose)
    import ray

    store = StoreWarmup(launch.tracking_uri)  # a new MLflow store is created while Ray starts
    try:
        cap, driver, console = start_ray(launch)
    except BaseException:
        ray.shutdown()
        store.undo()
        for d in launch.created:  # nothing half-written by a launch that never started
            shutil.rmtree(d, ignore_errors=True)
        raise
    store.wait()
    interrupts.install()  # Ctrl-C / SIGTERM: the study stops, its runs say KILLED, exit 130 / 143
    session = open_session(launch, cap, driver, console)
    t0 = time.time()
    try:
        rows = run_stages(session)
        files = finish(session, rows, time.time() - t0)
    except (KeyboardInterrupt, interrupts.Interrupted) as e:
        signum = interrupts.received() or signal.SIGINT
        session.tracker.mark_interrupted()
        session.tracker.finish_parent("KILLED")
        ray.shutdown()
        print(
            f"interrupted ({signal.Signals(signum).name}): no summary written; continue with --resume "
            f"--output-dir {launch.output_dir}",
            file=sys.stderr,
        )
        return getattr(e, "exit_code", 128 + signum)
    except BaseException:
        session.tracker.mark_interrupted()
        session.tracker.finish_parent("FAILED")
        raise
    finally:
        ray.shutdown()
        cluster.tidy_session(launch.output_dir)
    return report(session, rows, files)


def _quiet(verbose: bool) -> None:
    """Ray, Tune, MLflow and Optuna say less unless asked (--verbose)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if not verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # it announces every study it creates


def start_ray(launch: Launch) -> tuple[int, dict[str, float], Any]:
    """Join or start Ray, check the storage against the cluster as it is, wait (bounded) for room
    for one trial; (trials at once, a driver's resources, the console mailbox)."""
    address, args = launch.address, launch.args
    cluster.start_ray(
        address, verbose=args.verbose, temp_dir=None if address else cluster.ray_temp_dir(launch.output_dir)
    )
    if launch.shape is None:
        multi, why = cluster.is_multi_node(None, cluster.alive_nodes())
        cluster.check_storage(
            launch.storage_path,
            multi_node=multi,
            declared_shared=args.shared_storage,
            where=why,
            source=storage_source(args),
        )
    driver = cluster.driver_resources()
    need = cluster.plan_need(launch.plan.resources, driver)
    cluster.wait_for_first_trial(need, args.resource_timeout)
    cap = cluster.concurrency(
        launch.shape, need, launch.plan.resources.max_concurrent_trials, cluster.alive_node_resources()
    )
    return cap, driver, console_lines()


def open_session(launch: Launch, cap: int, driver: dict[str, float], console: Any) -> Session:
    """The study's parent MLflow run (a new one, or on --resume the launch's own)."""
    plan, args = launch.plan, launch.args
    launch_file = LaunchFile(launch.output_dir)
    tags = provenance()
    tracker = Tracker(launch.tracking_uri, plan.study.name, launch.output_dir, launch_file)
    parent = tracker.start_parent(
        plan.study.name,
        {
            "study_file": plan.source,
            "smoke_test": args.smoke_test,
            "seed": plan.seed,
            "resources": plan.resources.__dict__,
            "stages": [s.name for s in plan.stages],
        },
        {**tags, "description": plan.study.description[:500]},
        resume=args.resume,
        launch={
            "plan": launch.fingerprint,
            "plan_fields": plan_fields(plan),
            "storage_path": launch.storage_path,
            "optuna_storage": launch.optuna_storage,
        },
    )
    paper = load_paper_numbers(launch.study.paper)
    return Session(launch, launch_file, tracker, parent, tags, cap, driver, console, paper)


def run_stages(session: Session) -> list[dict]:
    rows: list[dict] = []
    refs: dict[str, str] = {}
    for stage in session.launch.plan.stages:
        refs = resolve_refs_for(stage, rows, refs)
        t0 = time.monotonic()
        stage_rows = trials(session, stage, refs)
        if interrupts.received():  # Tune stopped gracefully and returned: not a finished study
            raise interrupts.Interrupted(interrupts.received())
        t1 = time.monotonic()
        shard_seconds = certify(session, stage, stage_rows, refs)
        session.phases.append(phase_times(stage.name, stage_rows, t1 - t0, time.monotonic() - t1, shard_seconds))
        add_intervals(stage_rows)
        add_paper(stage_rows, session.paper)
        rows += stage_rows
    return rows


def phase_times(stage: str, rows: list[dict], trials_wall: float, certify_wall: float, shard_s: float) -> dict:
    """A stage's two phases in wall seconds beside their compute: the trials' training and
    screening seconds (each trial's mean epoch time by its epochs, its per-epoch monitor's
    seconds, plus its screening) and the
    certification shards' seconds, with the CPUs Ray had to run them on (the floor of a phase is
    its compute divided by those). ``bench/orchestration.py --phases`` prints the ratios."""
    import ray

    compute = 0.0
    for r in rows:
        m = r.get("metrics") or {}
        if isinstance(m.get("mean_epoch_time_s"), (int, float)) and isinstance(m.get("epoch"), (int, float)):
            compute += m["mean_epoch_time_s"] * m["epoch"] + float(m.get("val/eval_time_s") or 0.0)
            compute += float(m.get("total_monitor_time_s") or 0.0)
    return {
        "stage": stage,
        "trials_wall_s": round(trials_wall, 2),
        "trials_compute_s": round(compute, 2),
        "certify_wall_s": round(certify_wall, 2),
        "certify_compute_s": round(shard_s, 2),
        "cpus": float(ray.cluster_resources().get("CPU", 0.0)),
    }


def checkpoint_trials(session: Session, stage, refs: dict[str, str]) -> list[dict]:
    """An evaluation stage's trials: its checkpoints, as completed trials with nothing trained,
    each with its MLflow run (the same run again on a resume); certification does the rest."""
    from trainables.loading import evaluation_config

    plan = session.launch.plan
    rows = []
    for entry in stage.checkpoints:
        spec = substitute(entry["checkpoint"], refs)
        config = to_dict(evaluation_config(spec, entry_base(stage, entry)))
        run_id = session.tracker.checkpoint_run(stage.name, entry["name"], config, session.parent, session.tags)
        rows.append(
            trial_row(
                study=plan.study.name,
                stage=stage.name,
                trial_id=entry["name"],
                config=config,
                searched={},
                metrics={},
                status=TrialStatus.COMPLETED.value,
                mlflow_run_id=run_id,
                checkpoint=spec,
                evaluation={"protocol": stage.evaluation.protocol, "overrides": dict(stage.evaluation.overrides or {})},
            )
            | {"evaluated": True}
        )
    print(f"[{stage.name}] {len(rows)} checkpoint(s) to certify, nothing to train", flush=True)
    return rows


def trials(session: Session, stage, refs: dict[str, str]) -> list[dict]:
    """Run a stage's trials, or what an earlier launch left of them; all of them as rows."""
    from ray import tune

    if stage.evaluates:
        return checkpoint_trials(session, stage, refs)
    launch, plan = session.launch, session.launch.plan
    name = f"{plan.study.name}-{stage.name}"
    records = stage_records(session.launch_file.read(), stage.name)
    sp = plan_stage(stage, plan.seed, session.cap, records, name, launch.optuna_storage)
    payload = {
        "base": stage.base,
        "resources": to_dict(plan.resources),
        "storage_path": launch.storage_path,
        "screen": stage.evaluation.screen,
        "objectives": stage.search.objectives,
        "refs": refs,
        "stage": stage.name,
        "console": session.console,
        "resumes": sp.resumes,
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), session.driver)
    callbacks = [
        TrialLedger(session.launch_file, stage.name, sp.resumes),
        MLflowTrialCallback(
            session.tracker,
            parent_run_id=session.parent,
            stage=stage.name,
            study=plan.study.name,
            base=stage.base,
            refs=refs,
            tags=session.tags,
            resumes=sp.resumes,
        ),
        Progress(stage.name, sp.ended + sp.todo, session.console, done=sp.ended),
        interrupts.InterruptWatch(),
    ]
    again = f", {sp.ended} ended earlier, {len(sp.resumes)} resumed from their checkpoints" if records else ""
    print(
        f"[{stage.name}] {sp.ended + sp.todo} trial(s){again}, up to {session.cap} at once, "
        f"{plan.resources.num_workers} worker(s) each; search: {sampler_label(stage.search)}",
        flush=True,
    )
    session.tracker.log_params(session.parent, {f"sampler.{stage.name}": sampler_label(stage.search)})
    if sp.todo > 0:
        run_stage(
            stage,
            name=name,
            trainable=trainable,
            tune_config=sp.tune_config,
            storage_path=launch.storage_path,
            callbacks=callbacks,
        )
    return stage_rows(session, stage, refs)


def stage_rows(session: Session, stage, refs: dict[str, str]) -> list[dict]:
    """A stage's trials as rows, from the launch file; a checkpoint in an object store as a URI
    every node opens (Ray reports it without its scheme)."""
    rows = rows_from_records(
        stage_records(session.launch_file.read(), stage.name),
        study=session.launch.plan.study.name,
        stage=stage,
        refs=refs,
        run_id_of=session.launch_file.trial_run_id,
    )
    for r in rows:
        if r.get("checkpoint"):
            r["checkpoint"] = with_scheme(r["checkpoint"], session.launch.storage_path)
    return rows


def certify_settings(session: Session, stage, refs: dict[str, str]) -> certification.Settings:
    """How a stage's finalists are certified: its protocol, shards and the trials' resources."""
    launch, res = session.launch, session.launch.plan.resources
    return certification.Settings(
        protocol=stage.evaluation.protocol,
        overrides=dict(stage.evaluation.overrides or {}),
        seed=launch.plan.seed,
        shard_size=stage.certify.shard_size,
        transfer_source=substitute(stage.evaluation.transfer_source, refs),
        keep_adversarial=stage.certify.save_adversarial,
        cpus=res.cpus_per_worker,
        gpus=res.gpus_per_worker,
        export=tuple(stage.certify.export),
        study=launch.study.name,
    )


def certify(session: Session, stage, rows: list[dict], refs: dict[str, str]) -> float:
    """Certify the stage's finalists on the test split and put their numbers in their rows; the
    seconds its shards ran in this launch."""
    finalists = [r for r in select(rows, stage) if r.get("checkpoint")]
    if not finalists:
        return 0.0
    launch = session.launch
    settings = certify_settings(session, stage, refs)
    jobs = [
        certification.Finalist(
            stage.name,
            r["trial_id"],
            r["config"],
            r["checkpoint"],
            certification.certification_dir(launch.storage_path, launch.study.name, stage.name, r["trial_id"]),
            evaluated=stage.evaluates,
        )
        for r in finalists
    ]
    by_id = {r["trial_id"]: r for r in finalists}
    certification.plan(jobs, settings)
    n = sorted({f.images for f in jobs})
    print(
        f"[{stage.name}] certify {len(jobs)} finalist(s) on the test split ({'/'.join(map(str, n))} images each, "
        f"{stage.evaluation.protocol} protocol): {sum(len(f.jobs) for f in jobs)} shard(s) of up to "
        f"{settings.shard_size} images",
        flush=True,
    )

    def done(f: certification.Finalist) -> None:
        row = by_id[f.trial_id]
        add_certification(row, f.result)
        row["worst_case_per_image"] = f.worst_case  # the paired tests' input (summary.json, not MLflow)
        row["certification"] = f.files
        session.tracker.log_certification(stage.name, f.trial_id, f.result, _local(f.files), session.tags)
        m = f.result
        aa = f", AutoAttack {ci(m, TEST + 'autoattack_acc')}" if TEST + "autoattack_acc" in m else ""
        worst = f", worst case {ci(m, TEST + 'robust_acc')} images" if TEST + "robust_acc" in m else ""
        print(
            f"[{stage.name}] certified {f.trial_id}: clean {ci(m, TEST + 'clean_acc')}{aa}{worst} (95 % intervals)"
            f"  masking {describe_flags(m.get(TEST + 'masking_flags'))}",
            flush=True,
        )

    # each shard's attacks on the console only with --verbose: its progress lines say enough
    seconds = certification.run(
        jobs, settings, console=session.console if launch.args.verbose else None, on_finalist=done
    )
    for f in jobs:
        if f.error:
            by_id[f.trial_id]["certification_error"] = f.error
    return seconds


def _local(paths: list[str]) -> list:
    """The files MLflow can log from here (a local storage path; remote ones stay where they are)."""
    return [Path(p) for p in paths if "://" not in p and Path(p).is_file()]


def finish(session: Session, rows: list[dict], wall_time_s: float) -> list:
    """summary.json, summary.csv and the report, logged to the parent run."""
    launch, tracker = session.launch, session.tracker
    jpath, cpath = write_summary(
        launch.output_dir,
        launch.study.name,
        rows,
        {
            "study_file": launch.plan.source,
            "smoke_test": launch.args.smoke_test,
            "mlflow_parent_run_id": session.parent,
            "tracking_uri": launch.tracking_uri,
            "wall_time_s": wall_time_s,
            "phases": session.phases,
            **({"paper_source": session.paper.get("source")} if session.paper else {}),
            "paired_tests": paired_tests(rows),
        },
    )
    report_files = write_report(launch.study, rows, launch.output_dir)
    for path in [jpath, cpath, *report_files]:
        tracker.client.log_artifact(session.parent, str(path))
    failed = [r for r in rows if r["status"] == TrialStatus.FAILED]
    tracker.log_paper(rows)
    tracker.client.set_tag(session.parent, "trials", str(len(rows)))
    tracker.client.set_tag(session.parent, "trials_failed", str(len(failed)))
    tracker.finish_parent("FINISHED")
    return [jpath, cpath, *report_files]


def report(session: Session, rows: list[dict], files: list) -> int:
    """The results table, the files written, where to look in MLflow; the exit code."""
    launch = session.launch
    print()
    paper = session.paper
    print(table(rows, (paper["headline"], paper.get("source", "")) if paper.get("headline") else None))
    tests = paired_tests(rows)
    if tests:
        print("\npaired tests on the same test images:")
        for t in tests:  # within the table's 120 columns
            print(textwrap.fill(f"[{t['stage']}] {t['verdict']}", 118, initial_indent="  ", subsequent_indent="    "))
    jpath, cpath, *report_files = files
    print(f"\nwrote {jpath}, {cpath}" + (f" and {len(report_files)} report file(s)" if report_files else ""))
    uri = launch.tracking_uri
    if uri.startswith("sqlite"):
        print(f"open the MLflow UI:  {mlflow_ui_command(uri)}")
        # the UI's start page is MLflow's GenAI overview; the study's trials are in its runs table
        print(
            f"  then http://127.0.0.1:5000/#/experiments/{session.tracker.experiment_id}/runs (the study's training runs)"
        )
    else:
        print(f"MLflow: {uri.rstrip('/')}/#/experiments/{session.tracker.experiment_id}/runs")
    if any(s.search.algorithm == "optuna" and not s.evaluates for s in launch.plan.stages):
        print(f"open the Optuna dashboard:  {optuna_dashboard_command(launch.optuna_storage)}")
    if rows and all(r["status"] == TrialStatus.FAILED for r in rows):
        print(f"error: every trial failed (first: {rows[0].get('error', 'no cause recorded')})", file=sys.stderr)
        return EXIT_FAILED
    broken = [r for r in rows if r.get("certification_error")]
    if broken:
        print(
            f"error: the certification of {len(broken)} finalist(s) failed (first: {broken[0]['trial_id']}: "
            f"{broken[0]['certification_error']}); --resume runs its missing shards again",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def optuna_dashboard_command(url: str) -> str:
    """optuna-dashboard on the launch's Optuna database, bound to localhost (it is installed
    beside the sweep)."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    return f"{exe if exe.exists() else 'optuna-dashboard'} {url} --host 127.0.0.1 --port 8080"


def mlflow_ui_command(tracking_uri: str) -> str:
    """A command that works pasted into a new shell: this interpreter's own MLflow (no venv to
    activate), bound to 127.0.0.1."""
    return f"{sys.executable} -m mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
