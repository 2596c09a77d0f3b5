"""What Ray costs: the same epochs through Ray Train and through the plain trainables loop.

    python bench/orchestration.py                 # PGD-AT on digits, 6 epochs, CPU
    python bench/orchestration.py --json bench/results/orchestration-cpu.json

Reports (1) the per-epoch wall time through Ray Train (the sweep's own trainer,
``orchestrator/tuner/driver.py``, run from this driver; report + rank-0 checkpoint every epoch)
over the plain loop (which also saves a checkpoint every epoch), after start-up: the
first epoch and the last (final evaluation) are left out; (2) ray.init and per-trial start-up
seconds; (3) images/s with 1 and 2 DDP workers on CPU (gloo); (4) a one-worker trial's start-up
through the sweep as users run it, from Tune starting it to its first training step, in wall and
CPU seconds over every process, and where it goes, and a command's exit with and without its heap
frozen (``--startup-only``: just these).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, save  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")


def plain(cfg_raw: dict, threads: int) -> list[float]:
    """Per-epoch wall times of the plain loop, checkpointing every epoch like the Ray worker."""
    from trainables.checkpoint import save_checkpoint
    from trainables.config import resolve
    from trainables.loop import build, fit

    torch.set_num_threads(threads)
    comp = build(resolve(cfg_raw))
    stamps = [time.perf_counter()]
    with tempfile.TemporaryDirectory() as d:

        def on_end(metrics, make_state):
            save_checkpoint(make_state(), Path(d) / "checkpoint.pt")
            stamps.append(time.perf_counter())

        fit(comp, on_epoch_end=on_end)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def through_ray(cfg_raw: dict, workers: int, storage: str, name: str) -> dict:
    import ray.train

    from orchestrator.tuner.driver import lean_trainer_class, torch_config
    from orchestrator.tuner.worker import train_loop_per_worker

    log = Path(storage) / f"{name}.jsonl"

    class Stamp(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(log, "a") as f:
                f.write(
                    json.dumps(
                        {"t": time.time(), **{k: v for k, v in metrics[0].items() if isinstance(v, (int, float))}}
                    )
                    + "\n"
                )

    trainer = lean_trainer_class()(  # the sweep's trainer; from this driver, with Ray's own controller actor
        train_loop_per_worker,
        backend_config=torch_config(),
        train_loop_config={"train": cfg_raw, "threads": 1},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=storage, callbacks=[Stamp()]),
    )
    t0 = time.time()
    trainer.fit()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    stamps = [r["t"] for r in rows]
    return {
        "per_epoch": [b - a for a, b in zip(stamps, stamps[1:])],
        "first_report_s": stamps[0] - t0,
        "first_epoch_s": rows[0]["epoch_time_s"],
        "images_per_s": [r["images_per_s"] for r in rows],
    }


STARTUP_STUDY = """
name: startup
base: {method: natural, dataset: digits, epochs: 1, monitor: {every: 0}}
search: {algorithm: grid, params: {seed: {values: [0]}}}
evaluation: {protocol: basic, screen: basic}
"""


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants now."""
    import psutil

    total = 0.0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def trial_startup() -> dict:
    """One one-worker trial through the sweep as users run it (its private local Ray, Tune, Ray
    Train): from Tune starting the trial's driver to the worker's first training step, in wall
    seconds and in CPU seconds over every process of the sweep, with where the time goes
    (``orchestrator/tuner/trace.py`` milestones)."""
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        study, trace = Path(d) / "startup.yaml", Path(d) / "trace.jsonl"
        study.write_text(STARTUP_STUDY)
        env = {**os.environ, "SPROUT_TRACE_STARTUP": str(trace), "SPROUT_BOOTSTRAP_CONFIG": ""}
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parents[1] / "orchestrator" / "sweep.py"), "--config",
             str(study), "--output-dir", str(Path(d) / "out")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        cpu: dict[str, float] = {}
        while proc.poll() is None:
            seen = {json.loads(x)["what"] for x in trace.read_text().splitlines()} if trace.exists() else set()
            for what in ("suggested", "driver", "built"):
                if what in seen and what not in cpu:
                    cpu[what] = _tree_cpu(proc.pid)
            time.sleep(0.05)
        stamps = {}
        for line in trace.read_text().splitlines():
            r = json.loads(line)
            stamps.setdefault(r["what"], r)
    t = {k: v["t"] for k, v in stamps.items()}
    return {
        # from Tune creating the trial (the grid searcher's suggest: its actor is asked for next) to the first step
        "trial_startup_wall_s": round(t["built"] - t["suggested"], 2),
        "trial_startup_cpu_s": round(cpu.get("built", float("nan")) - cpu.get("suggested", float("nan")), 2),
        # the same from the trial driver's first line (its actor process up, ray.tune imported): the figure
        # this benchmark printed before it counted the actor's start
        "trial_startup_from_driver_wall_s": round(t["built"] - t["driver"], 2),
        "trial_startup_from_driver_cpu_s": round(cpu.get("built", float("nan")) - cpu.get("driver", float("nan")), 2),
        "startup_suggested_to_tune_start_s": round(t["tune_start"] - t["suggested"], 2),  # the actor's process
        # Tune's on_trial_start (the trial's actor is up) to the driver's code
        "startup_tune_to_driver_s": round(t["driver"] - t["tune_start"], 2) if "tune_start" in t else None,
        "startup_driver_to_fit_s": round(t["fit"] - t["driver"], 2),  # the trial driver's imports, the trainer
        "startup_fit_to_worker_s": round(
            t["worker"] - t["fit"], 2
        ),  # Train's controller, placement group, worker spawn
        "startup_worker_to_first_step_s": round(t["built"] - t["worker"], 2),  # imports, process group, data, model
        # inside fit(): Train's controller process, its worker group (actors, process group), its training function
        **{f"startup_{a}_to_{b}_s": round(t[b] - t[a], 2) for a, b in STEPS if a in t and b in t},
        # the trial's end: its training function returned, to Tune hearing the trial complete
        **{f"teardown_{a}_to_{b}_s": round(t[b] - t[a], 2) for a, b in TEARDOWN if a in t and b in t},
        # each process at its milestones: its own CPU seconds since it started, the heavy modules it had imported
        "startup_processes": {
            w: {"cpu_s": round(r["cpu_s"], 2), "loaded": r.get("loaded", [])} for w, r in stamps.items()
        },
    }


STEPS = [("fit", "controller"), ("controller", "group_start"), ("group_start", "worker_up"),
         ("worker_up", "process_group"), ("process_group", "group_started"), ("group_started", "training_start"),
         ("training_start", "worker")]  # fmt: skip


TEARDOWN = [("worker_end", "group_shutdown"), ("group_shutdown", "group_stopped"),
            ("group_stopped", "controller_finish"), ("controller_finish", "tune_complete")]  # fmt: skip


EXIT_CHILD = """
import sys, time
import orchestrator.run, ray.tune, mlflow, optuna, matplotlib.pyplot  # what a sweep's driver has at its end
from trainables.cli import exit_now
print(time.time(), flush=True)
exit_now(0) if sys.argv[1] == "frozen" else sys.exit(0)
"""


def command_exit() -> dict:
    """A command's exit, from its last line to its process's end, in wall and CPU seconds: a
    process holding what a sweep's driver imports (torch, Ray Tune, MLflow, Optuna, matplotlib)
    leaving through ``trainables.cli.exit_now`` (the heap frozen first) and through a plain
    ``sys.exit`` (the interpreter's last garbage collection walks all of it)."""
    import subprocess

    out = {}
    for how in ("frozen", "plain"):
        p = subprocess.Popen([sys.executable, "-c", EXIT_CHILD, how], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])  # fmt: skip
        last = float(p.stdout.readline())
        cpu_at_last = _tree_cpu(p.pid)
        _, status, usage = os.wait4(p.pid, 0)
        end = time.time()
        p.returncode = os.waitstatus_to_exitcode(status)
        assert p.returncode == 0, f"the {how} exit failed ({p.returncode})"
        out[f"exit_{how}_wall_s"] = round(end - last, 3)
        out[f"exit_{how}_cpu_s"] = round(max(0.0, usage.ru_utime + usage.ru_stime - cpu_at_last), 3)
    out["exit_plain_over_frozen_cpu"] = round(out["exit_plain_cpu_s"] / max(out["exit_frozen_cpu_s"], 1e-3), 2)
    return out


PHASE_TARGETS = {"trials": 1.3, "certify": 1.15}  # a phase's wall over its compute floor (issue 33)


def phase_ratios(summary: dict) -> list[str]:
    """Each stage's trial and certification phases of a finished sweep against their floor: the
    phase's compute seconds (trials: training and screening; certification: its shards) divided
    by the CPUs Ray had, as ``orchestrator/run.py`` records them in ``summary.json``."""
    lines = []
    for p in summary.get("phases") or []:
        cpus = p["cpus"] or 1.0
        for phase in ("trials", "certify"):
            wall, compute = p[f"{phase}_wall_s"], p[f"{phase}_compute_s"]
            if compute <= 0:
                continue
            floor = compute / cpus
            lines.append(
                f"[{p['stage']}] {phase:<8} wall {wall:7.1f} s, compute {compute:7.1f} s on {cpus:g} CPUs "
                f"(floor {floor:6.1f} s): {wall / floor:.2f}x the floor (target {PHASE_TARGETS[phase]}x)"
            )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="pgd_at")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", default=None)
    ap.add_argument("--startup-only", action="store_true", help="only the sweep's one-trial start-up")
    ap.add_argument("--phases", metavar="OUTPUT_DIR", help="only the phase ratios of a finished sweep's summary.json")
    args = ap.parse_args(argv)
    if args.phases:
        for line in phase_ratios(json.loads((Path(args.phases) / "summary.json").read_text())):
            print(line)
        return 0
    startup = trial_startup()
    startup.update(command_exit())
    print("one-worker trial through the sweep, from Tune creating it (its actor asked for) to its first training step:")
    print(f"  wall {startup['trial_startup_wall_s']:.2f} s (target 5), CPU {startup['trial_startup_cpu_s']:.2f} s "
          f"over every process (target 8)")  # fmt: skip
    print(f"  from the trial driver's first line: wall {startup['trial_startup_from_driver_wall_s']:.2f} s, "
          f"CPU {startup['trial_startup_from_driver_cpu_s']:.2f} s")  # fmt: skip
    print(f"    {'suggested_to_tune_start_s':<26} {startup['startup_suggested_to_tune_start_s']:.2f} s "
          "(the trial's actor process: spawn, ray.tune, the trainable)")  # fmt: skip
    if startup["startup_tune_to_driver_s"] is not None:
        print(
            f"    {'tune_start_to_driver_s':<26} {startup['startup_tune_to_driver_s']:.2f} s (the trial's actor is up)"
        )
    for k in ("startup_driver_to_fit_s", "startup_fit_to_worker_s", "startup_worker_to_first_step_s"):
        print(f"    {k[len('startup_') :]:<26} {startup[k]:.2f} s")
        if k == "startup_fit_to_worker_s":
            for a, b in STEPS:
                if f"startup_{a}_to_{b}_s" in startup:
                    print(f"      {a + ' to ' + b:<32} {startup[f'startup_{a}_to_{b}_s']:.2f} s")
    print("  the trial's end, from its training function's return to Tune hearing it complete:")
    for a, b in TEARDOWN:
        if f"teardown_{a}_to_{b}_s" in startup:
            print(f"      {a + ' to ' + b:<32} {startup[f'teardown_{a}_to_{b}_s']:.2f} s")
    print(f"  a command's exit (a sweep driver's imports), its last line to its end: frozen heap "
          f"{startup['exit_frozen_wall_s']:.2f} s wall, {startup['exit_frozen_cpu_s']:.2f} CPU-s; plain sys.exit "
          f"{startup['exit_plain_wall_s']:.2f} s, {startup['exit_plain_cpu_s']:.2f} CPU-s "
          f"({startup['exit_plain_over_frozen_cpu']:.1f}x the CPU)")  # fmt: skip
    print("  each process's own CPU seconds at a milestone, and the heavy modules it had imported:")
    for what, r in startup["startup_processes"].items():
        print(f"    {what:<16} {r['cpu_s']:5.2f} CPU-s  {', '.join(r['loaded']) or '-'}")
    if args.startup_only:
        return 0
    cfg = {"method": args.method, "dataset": "digits", "epochs": args.epochs, "monitor": {"every": 0}}
    plain_epochs = plain(cfg, threads=1)

    import ray

    t0 = time.time()
    # address="local": a private Ray, never a cluster that `ray start` left running on this machine
    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray_init_s = time.time() - t0
    with tempfile.TemporaryDirectory() as storage:
        one = through_ray(cfg, 1, storage, "bench-1")
        two = through_ray(cfg, 2, storage, "bench-2")
    ray.shutdown()
    plain_epochs += plain(cfg, threads=1)[1:]  # plain runs on both sides of the Ray runs
    # steady state: drop the first epoch (start-up) and the last (final evaluation)
    p_steady = median(plain_epochs[1:])
    r_steady = median(one["per_epoch"][:-1])
    out = {
        "device": "cpu",
        "method": args.method,
        "dataset": "digits",
        "epochs": args.epochs,
        "plain_epoch_s": round(p_steady, 4),
        "ray_epoch_s": round(r_steady, 4),
        "ray_over_plain_epoch_ratio": round(r_steady / p_steady, 3),
        "ray_init_s": round(ray_init_s, 2),
        "trial_startup_s": round(one["first_report_s"] - one["first_epoch_s"], 2),
        "images_per_s_1_worker": round(median(one["images_per_s"][1:]), 1),
        "images_per_s_2_workers": round(median(two["images_per_s"][1:]), 1),
    }
    out["ddp_2_over_1_throughput"] = round(out["images_per_s_2_workers"] / out["images_per_s_1_worker"], 3)
    out.update(startup)
    print(f"{args.method} on digits, {args.epochs} epochs, CPU ({os.cpu_count()} cores), 1 thread per worker")
    print(f"  per-epoch wall, plain loop        {p_steady:.3f} s")
    print(f"  per-epoch wall, through Ray Train {r_steady:.3f} s   ratio {out['ray_over_plain_epoch_ratio']:.2f}x")
    print(f"  ray.init                          {ray_init_s:.1f} s")
    print(f"  per-trial start-up                {out['trial_startup_s']:.1f} s (worker group, process group, data)")
    print(f"  images/s, 1 DDP worker            {out['images_per_s_1_worker']:.0f}")
    print(
        f"  images/s, 2 DDP workers (gloo)    {out['images_per_s_2_workers']:.0f}   ({out['ddp_2_over_1_throughput']:.2f}x)"
    )
    p = save(out, args.json, "orchestration-cpu")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
