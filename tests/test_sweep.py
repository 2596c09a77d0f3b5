"""End to end through local Ray on CPU: the sensitivity smoke study, and ASHA. (DDP over gloo, with a
worker killed mid-training, is in test_reliability.py.)"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import free_port, kill_tree, mlflow_client, render, serve, sweep

from trainables.evaluation.masking import CHECKS

pytestmark = pytest.mark.slow  # every test here starts Ray


@pytest.fixture
def smoke(smoke_sweep):
    """The session's one smoke sweep (conftest.py): these tests only read what it wrote."""
    return smoke_sweep


def test_smoke_sensitivity_writes_summary_and_table(smoke):
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    assert s["study"] == "sensitivity" and len(s["trials"]) == 3
    for t in s["trials"]:
        assert {"trial_id", "config", "metrics", "status", "mlflow_run_id"} <= set(t)
        assert t["status"] == "completed" and t["config"]["method"] == "sprout"
        for k in ("epoch_time_s", "images_per_s", "val/clean_acc", "val/robust_acc", "val/pgd20_acc"):
            assert k in t["metrics"], k
        # the screening ran its masking checks: the flags are registered checks' names, each with its detail
        flags = t["metrics"]["val/masking_flags"]
        assert isinstance(flags, list) and set(flags) <= set(CHECKS.names()), flags
        assert [d.split(":")[0] for d in t["metrics"].get("val/masking_details", [])] == flags
        # selected on a validation split held out of digits' training split (20 %), screened there
        assert t["config"]["data"]["val_size"] == 0.2 and t["metrics"]["val/n_eval"] == 287
        assert t["selected_on"] == "validation" and isinstance(t["finalist"], bool)
        assert len(t["ci95"]["val/robust_acc"]) == 2
        # only the finalists read the test split: certified in 2 shards of 50 of the smoke's 100 images
        test = {k for k in t["metrics"] if k.startswith("test/")}
        if not t["finalist"]:
            assert not test, test
            continue
        assert {"test/clean_acc", "test/robust_acc", "test/pgd20_acc", "test/autoattack_acc"} <= test
        assert t["metrics"]["test/n_eval"] == 100 and t["metrics"]["test/shards"] == 2
        assert len(t["ci95"]["test/robust_acc"]) == 2
        (cert,) = [f for f in t["certification"] if f.endswith("certification.json")]
        certified = json.loads(Path(cert).read_text())
        assert certified["robust_acc_min"] == t["metrics"]["test/robust_acc"]
        # the test split's flags are exactly the certification's failed checks, every check having run or said why not
        checks = certified["masking_checks"]
        assert set(checks) == set(CHECKS.names())
        assert t["metrics"]["test/masking_flags"] == [n for n in CHECKS.ordered() if checks[n]["ok"] is False]
    assert any(t["finalist"] for t in s["trials"])
    # the paper's defaults were enqueued as the first Optuna point, and are always a finalist
    firsts = [t["searched"] for t in s["trials"]]
    assert {
        "method_args.alpha": 0.01,
        "method_args.mixup_a": 0.2,
        "method_args.delta": 0.1,
        "method_args.lr_beta": 0.01,
    } in firsts
    assert all(t["finalist"] for t in s["trials"] if t["paper_default"])
    assert (out / "summary.csv").read_text().count("\n") == 4
    # Tune's trial directories are named by the trial id people see, not by Optuna's "a/b" keys
    exp = out / "ray" / "sensitivity-main"
    assert {d.name for d in exp.iterdir() if d.is_dir() and d.name.startswith("trial_")} == {
        f"trial_{t['trial_id']}" for t in s["trials"]
    }
    assert "robust%" in p.stdout and "-m mlflow ui --backend-store-uri sqlite:////" in p.stdout
    # the finished sweep leaves no live-looking Ray session behind: no sockets, no dangling links,
    # no address of its stopped Ray
    for f in (out / "ray-tmp").rglob("*"):
        assert not f.is_symlink() and not f.is_socket(), f
    assert (out / "ray-tmp" / "ray").is_dir() and not list((out / "ray-tmp" / "ray").iterdir())


def test_smoke_sensitivity_mlflow_parent_and_children(smoke):
    out, _ = smoke
    s = json.loads((out / "summary.json").read_text())
    client = mlflow_client(out)
    exp = client.get_experiment_by_name("sensitivity")
    parent = client.get_run(s["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.json", "summary.csv"}
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in s["trials"])
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["method"] == "sprout" and r.data.tags["dataset"] == "digits"
        assert r.data.tags["git_commit"] and "version.torch" in r.data.tags
        assert r.data.params["method_args.variant"] == "paper"
        for k in ("loss", "val/clean_acc", "val/robust_acc", "epoch_time_s", "images_per_s"):
            assert k in r.data.metrics, k
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 3  # one per epoch
        assert {"config.json", "eval.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    # each finalist's certification is a run of its own under the trial's run, with the test numbers
    for t in s["trials"]:
        certs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{t['mlflow_run_id']}'")
        assert len(certs) == (1 if t["finalist"] else 0)
        for c in certs:
            assert c.info.status == "FINISHED" and c.data.tags["kind"] == "certification"
            assert c.data.metrics["test/robust_acc"] == t["metrics"]["test/robust_acc"]
            assert {"test/clean_acc", "test/autoattack_acc", "test/pgd20_acc"} <= set(c.data.metrics)
            assert "certification.json" in {a.path for a in client.list_artifacts(c.info.run_id)}


def test_smoke_table_is_a_person_readable_summary(smoke):
    """Percentages, the full trial ids of the progress lines, the finalists and the paper-default
    trial marked, rows sorted by what the search selected on, a footer with the splits and
    image counts, at most 120 characters wide."""
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    lines = p.stdout[p.stdout.index("trial  ") :].splitlines()
    table = lines[: lines.index(next(x for x in lines if x.startswith("wrote ")))]
    assert max(len(x) for x in table) <= 120
    body = table[2 : 2 + len(s["trials"])]
    ids = [row.split()[0].lstrip("^*") for row in body]
    assert sorted(ids) == sorted(t["trial_id"] for t in s["trials"])
    for t in s["trials"]:
        assert f"trial {t['trial_id']} epoch 1:" in p.stdout  # the same id in the progress lines
        row = body[ids.index(t["trial_id"])]
        assert row.startswith("^") == t["finalist"]  # the finalists, chosen on validation, marked
        if t["finalist"]:  # its test worst case with its interval; the others have none
            assert f"{100 * t['metrics']['test/robust_acc']:.1f}±" in row
    default = [t for t in s["trials"] if t["paper_default"]]
    assert len(default) == 1 and any(row.lstrip("^").startswith("*" + default[0]["trial_id"]) for row in body)
    # sorted by what the search selected on: the validation split's worst case, not the test split's
    robust = [t["metrics"]["val/robust_acc"] for t in sorted(s["trials"], key=lambda t: ids.index(t["trial_id"]))]
    assert robust == sorted(robust, reverse=True)
    best = max(s["trials"], key=lambda t: t["metrics"]["val/robust_acc"])
    assert f"{100 * best['metrics']['val/robust_acc']:.1f}±" in body[0]  # percentages with their interval
    footer = " ".join(" ".join(table[2 + len(s["trials"]) :]).split())  # wrapped at the table's width
    assert "selected on validation (287 images;" in footer and "certified on test (100 images)" in footer
    assert "on the same 10 images" in footer  # clean, PGD-20, AutoAttack, worst case: AutoAttack's images


def test_smoke_console_follows_each_trial_through_training_screening_and_certification(smoke):
    """Per epoch: the id, the searched values on the first line, loss, monitor accuracies,
    images/s; during the screening, a line per attack; during certification, progress lines
    (shards, images/s, time left) and one line per certified finalist; none of Ray's, Tune's or
    Optuna's own noise."""
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    lines = p.stdout.splitlines()
    for t in s["trials"]:
        first = next(x for x in lines if f"trial {t['trial_id']} epoch 1:" in x)
        assert "monitor (val) clean" in first and "img/s" in first and "alpha=" in first and "gamma_beta=" in first
        screened = [x for x in lines if x.startswith(f"[main] trial {t['trial_id']} val ")]
        assert {"clean", "fgsm", "pgd20"} <= {x.split(" val ")[1].split(":")[0] for x in screened}, screened
        assert all(x.endswith("s)") for x in screened if " val clean" not in x), screened
        assert any(x.startswith(f"[main] certified {t['trial_id']}: clean ") for x in lines) == t["finalist"]
    finalists = sum(t["finalist"] for t in s["trials"])
    progress = [x for x in lines if x.startswith("[main] certify: ")]
    assert progress[-1].startswith(
        f"[main] certify: {2 * finalists}/{2 * finalists} shards, {100 * finalists}/{100 * finalists} test images"
    ), progress
    assert all("images/s" in x and ("s left" in x or "unknown yet" in x) for x in progress), progress
    both = p.stdout + p.stderr
    for noise in (
        "INFO",
        "Trial status",
        "[I 20",
        "Configuration for experiment",
        "View detailed results",
        "maximum expected startup concurrency",
    ):
        assert noise not in both, noise


def test_smoke_search_is_model_based_and_says_so(smoke):
    out, p = smoke
    assert "search: Optuna TPE (2 objectives, 2 random start-up trials)" in p.stdout
    s = json.loads((out / "summary.json").read_text())
    parent = mlflow_client(out).get_run(s["mlflow_parent_run_id"])
    assert parent.data.params["sampler.main"].startswith("Optuna TPE")
    assert "Optuna TPE" in (out / "report.md").read_text()


def test_smoke_mlflow_layout_compares_trials_well(smoke):
    out, p = smoke
    s = json.loads((out / "summary.json").read_text())
    client = mlflow_client(out)
    exp = client.get_experiment_by_name("sensitivity")
    assert exp.artifact_location == (out / "mlartifacts").resolve().as_uri()  # the output directory is self-contained
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert not (out.parent / "mlruns").exists()
    for t in s["trials"]:
        r = client.get_run(t["mlflow_run_id"])
        settings = ("val/eps", "val/n_eval", "final") + (("test/n_eval", "test/autoattack_n") if t["finalist"] else ())
        for setting in settings:
            assert setting in r.data.params and setting not in r.data.metrics, setting
        assert "resumed_from_epoch" not in r.data.metrics
        # one series per meaning: the monitor per epoch, the screening and the certification once
        assert len(client.get_metric_history(r.info.run_id, "monitor_clean_acc")) == 3
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/robust_acc")] == [3]  # the screening
        assert "clean_acc" not in r.data.metrics and "robust_acc" not in r.data.metrics  # no number without its split
        if t["finalist"]:
            assert len(client.get_metric_history(r.info.run_id, "test/robust_acc")) == 1
            assert {"test/seconds/autoattack", "test/seconds/pgd20"} <= set(r.data.metrics)  # what each attack cost
        else:
            assert not [k for k in r.data.metrics if k.startswith("test/")]
        assert {"alpha", "mixup_a", "delta", "gamma_beta"} <= set(r.data.params)
        assert r.data.tags["searched_params"] == "alpha,mixup_a,delta,gamma_beta"
        assert r.data.params["precision"] == "fp32"
        assert {"val/seconds/pgd20", "val/seconds/fgsm"} <= set(r.data.metrics)
        assert Path(r.data.tags["checkpoint"]).is_file()
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert "checkpoint.pt" in arts and Path(exp.artifact_location[len("file://") :]).is_dir()


def test_printed_mlflow_command_works_in_a_new_shell(smoke):
    """The printed MLflow command serves the study in a shell of its own; in headless Chromium its
    runs page lists every trial and the Models page every certified finalist's version."""
    out, p = smoke
    line = next(x for x in p.stdout.splitlines() if x.startswith("open the MLflow UI:"))
    cmd = line.split(":", 1)[1].split()
    assert cmd[0] == sys.executable and cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[-4:] == ["--host", "127.0.0.1", "--port", "5000"]
    # and where the study's runs are (the UI's start page is its GenAI overview)
    after = p.stdout.splitlines()[p.stdout.splitlines().index(line) + 1]
    assert re.fullmatch(
        r"  then http://127\.0\.0\.1:5000/#/experiments/\d+/runs \(the study's training runs\)", after
    ), after
    # the command itself, in a shell with nothing of this one's environment, on a port of its own;
    # then its pages in headless Chromium: the study's runs, and the registered finalists
    port = free_port()
    server = serve([*cmd[:-1], str(port)], port, "/health", env={"PATH": "/usr/bin:/bin"})
    try:
        client = mlflow_client(out)
        summary = json.loads((out / "summary.json").read_text())
        experiment = re.search(r"#/experiments/(\d+)/runs", after).group(1)
        runs = client.search_runs([experiment])  # the study's parent run, its trials and certifications
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        runs_page = render(f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs", out / "chromium-runs",
                           screenshot=out / "mlflow-runs.png")  # fmt: skip
        # the trials sit under the study's run (collapsed until "Expand rows"); the page counts them all
        assert parent.info.run_name in runs_page
        assert re.search(r"<strong>(\d+)</strong> matching runs", runs_page).group(1) == str(len(runs))
        assert len(runs) == 1 + len(summary["trials"]) + sum(bool(t.get("certified")) for t in summary["trials"])
        certified = [t for t in summary["trials"] if t.get("certified")]
        models_page = render(f"http://127.0.0.1:{port}/#/models/sensitivity", out / "chromium-models",
                             screenshot=out / "mlflow-models.png")  # fmt: skip
        versions = set(re.findall(r"/models/sensitivity/versions/(\d+)", models_page))
        assert versions == {str(i + 1) for i in range(len(certified))}, versions
        assert all(t["trial_id"] in models_page for t in certified)  # each version's trial_id tag
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_trial_runs_record_their_data_and_certified_finalists_are_registered_models(smoke):
    """Each trial's run names what it trained and screened on (mlflow dataset inputs with the
    digest of the image indices: one validation split for the whole search), each certification
    run its test images, and each certified finalist is a version of the study's registered model
    with its test numbers."""
    out, _ = smoke
    client = mlflow_client(out)
    s = json.loads((out / "summary.json").read_text())
    digests = {}
    for t in s["trials"]:
        inputs = client.get_run(t["mlflow_run_id"]).inputs.dataset_inputs
        by = {i.tags[0].value: i.dataset for i in inputs}
        assert set(by) == {"training", "validation"} and by["training"].name == "digits-train"
        assert json.loads(by["training"].profile)["num_rows"] > json.loads(by["validation"].profile)["num_rows"] > 0
        digests.setdefault("validation", set()).add(by["validation"].digest)
    assert len(digests["validation"]) == 1  # every trial screened on the same images
    # the worker's own use of its device, per epoch, as MLflow system metrics (CPU here)
    for t in s["trials"]:
        history = client.get_metric_history(t["mlflow_run_id"], "system/worker_0/cpu_percent")
        assert len(history) == t["metrics"]["epoch"] and all(m.value > 0 for m in history)
        assert client.get_metric_history(t["mlflow_run_id"], "system/worker_0/loader_wait_s")
        assert t["metrics"]["mean_cpu_percent"] > 0 and 0 <= t["metrics"]["mean_loader_wait_share"] < 1
    assert "## Device utilisation" in (out / "report.md").read_text()
    versions = client.search_model_versions("name = 'sensitivity'")
    certified = {t["trial_id"]: t for t in s["trials"] if t.get("certified")}
    assert sorted(v.tags["trial_id"] for v in versions) == sorted(certified)
    for v in versions:
        t = certified[v.tags["trial_id"]]
        assert v.run_id == t["mlflow_run_id"] and v.source.endswith("checkpoint.pt")
        assert float(v.tags["test/robust_acc"]) == t["metrics"]["test/robust_acc"]
        cert = client.get_run(v.tags["certification_run"])
        (test_input,) = cert.inputs.dataset_inputs
        assert test_input.dataset.name == "digits-test" and test_input.tags[0].value == "test"


def test_the_printed_optuna_dashboard_opens_the_searchs_study(smoke):
    """The Optuna study lives in the output directory's database (not in memory): the printed
    optuna-dashboard command serves it, its API lists the search's trials with their values, and
    its trial list in headless Chromium names each."""
    import urllib.request

    out, p = smoke
    line = next(x for x in p.stdout.splitlines() if x.startswith("open the Optuna dashboard:"))
    cmd = line.split(":", 1)[1].split()
    assert cmd[1] == f"sqlite:///{(out / 'optuna.db').resolve()}" and cmd[-4:] == [
        "--host",
        "127.0.0.1",
        "--port",
        "8080",
    ]
    port = free_port()
    server = serve([*cmd[:-1], str(port)], port, "/api/studies")
    try:
        get = lambda path: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read())  # noqa: E731
        studies = get("/api/studies")["study_summaries"]
        (study,) = [x for x in studies if x["study_name"] == "sensitivity-main"]
        detail = get(f"/api/studies/{study['study_id']}?after=0")
        trials = detail["trials"]
        assert detail["objective_names"] == ["val/clean_acc", "val/robust_acc"]  # the dashboard's axis labels
        # what a user sees: the dashboard's trial list in headless Chromium names every trial
        page = render(f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}/trials", out / "chromium-optuna",
                      screenshot=out / "optuna-dashboard.png")  # fmt: skip
        assert all(f"Trial {t['number']}" in page for t in trials) and f"Trial {len(trials)}" not in page
    finally:
        server.terminate()
        server.wait(timeout=30)
    summary = json.loads((out / "summary.json").read_text())["trials"]
    assert len(trials) == len(summary) and {t["state"] for t in trials} == {"Complete"}
    told = sorted(tuple(round(v, 6) for v in t["values"]) for t in trials)
    ours = sorted((round(r["metrics"]["val/clean_acc"], 6), round(r["metrics"]["val/robust_acc"], 6)) for r in summary)
    assert told == ours  # what Optuna was told: the validation numbers of every trial
    assert {p["name"] for p in trials[0]["params"]} == {"method_args/alpha", "method_args/mixup_a", "method_args/delta",
                                                        "method_args/lr_beta"}  # fmt: skip


ASHA_STUDY = textwrap.dedent("""
    name: asha
    base: {method: sprout, dataset: digits, epochs: 4, monitor: {n: 64, pgd_steps: 3}}
    search:
      algorithm: optuna
      num_samples: 6
      metric: robust_acc
      mode: max
      params:
        method_args.delta: {type: float, low: 0.0, high: 0.3}
      scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    evaluation: {protocol: basic}
    resources: {cpus_per_worker: 0.5}  # 4 trials at once on 2 CPUs: trial start-up overlaps
""")


@contextmanager
def another_ray():
    """A second Ray running on the machine while the sweep runs (a second study, a user's own)."""
    d = tempfile.mkdtemp(prefix="other-ray-")  # short: Ray's socket paths
    code = (
        "import ray, sys; ray.init(address='local', num_cpus=0, include_dashboard=False, _temp_dir=sys.argv[1]); "
        "print('up', flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, d],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert p.stdout.readline().strip() == "up"
        yield
    finally:
        kill_tree([p.pid])
        shutil.rmtree(d, ignore_errors=True)


def test_asha_stops_trials_early_and_later_trials_still_run(tmp_path):
    """Early-stopped trials must release their worker groups (the dashboard must run, and Ray
    Train's placement-group cleaner must find this sweep's Ray although another one runs on the
    machine), or later trials and the certification wait forever: the timeout catches that hang."""
    f = tmp_path / "asha.yaml"
    f.write_text(ASHA_STUDY)
    out = tmp_path / "out"
    with another_ray():
        sweep("--config", str(f), "--output-dir", str(out), cwd=tmp_path, timeout=600)
    trials = json.loads((out / "summary.json").read_text())["trials"]
    statuses = [t["status"] for t in trials]
    assert len(trials) == 6 and "stopped" in statuses and "completed" in statuses
    client = mlflow_client(out)
    runs = {r.info.run_id: r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    for t in trials:
        r = runs[t["mlflow_run_id"]]
        assert r.info.status == ("FINISHED" if t["status"] == "completed" else "KILLED")
        assert r.data.tags["trial_status"] == t["status"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


def test_the_dry_run_shows_the_configs_the_sweep_then_ran(smoke, capsys):
    """The same resolution feeds both: the smoke study's dry run and its run agree on the paper-default
    trial's whole config, and on the number of trials."""
    from orchestrator.sweep import main

    out, _ = smoke
    assert main(["--smoke-test", "--dry-run", "--json"]) == 0
    (stage,) = json.loads(capsys.readouterr().out)["stages"]
    s = json.loads((out / "summary.json").read_text())
    (default,) = [t for t in s["trials"] if t["paper_default"]]
    assert stage["trials"][0]["config"] == default["config"]
    assert len(stage["trials"]) == len(s["trials"])


def test_the_summary_records_each_phase_beside_its_compute(smoke):
    """summary.json carries each stage's trial and certification phases in wall seconds beside
    their compute (the trials' training, per-epoch monitor and screening seconds, the shards'
    seconds) and the CPUs they had; the orchestration benchmark prints each phase against that floor."""
    out, _ = smoke
    s = json.loads((out / "summary.json").read_text())
    (phase,) = s["phases"]
    trained = [t for t in s["trials"] if t["status"] == "completed"]
    assert all(t["metrics"]["total_monitor_time_s"] > 0 for t in trained)  # the smoke study monitors each epoch
    compute = sum(t["metrics"]["mean_epoch_time_s"] * t["metrics"]["epoch"] + t["metrics"]["val/eval_time_s"]
                  + t["metrics"]["total_monitor_time_s"] for t in trained)  # fmt: skip
    assert phase["stage"] == "main" and abs(phase["trials_compute_s"] - compute) < 0.05 and phase["cpus"] > 0
    assert 0 < phase["certify_compute_s"] and 0 < phase["trials_wall_s"] + phase["certify_wall_s"] < s["wall_time_s"]
    p = subprocess.run([sys.executable, "bench/orchestration.py", "--phases", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert [x.split()[1] for x in lines] == ["trials", "certify"]
    floor = phase["trials_compute_s"] / phase["cpus"]
    assert f"{phase['trials_wall_s'] / floor:.2f}x the floor (target 1.3x)" in lines[0]


def test_each_trials_train_controller_runs_in_the_trials_own_process(smoke):
    """The lean trainer runs Ray Train's controller in the trial's driver (one process fewer per
    trial): the controller's milestones are stamped by the processes that called ``fit()``, one
    per trial, and the workers by others."""
    out, _ = smoke
    rows = [json.loads(x) for x in (out.parent / f"{out.name}-trace.jsonl").read_text().splitlines()]
    milestones = ("fit", "controller", "training_start", "controller_finish", "worker")
    pids = {w: {r["pid"] for r in rows if r["what"] == w} for w in milestones}
    trials = json.loads((out / "summary.json").read_text())["trials"]
    assert len([r for r in rows if r["what"] == "fit"]) == len(trials) == 3
    assert pids["controller"] and pids["controller"] | pids["training_start"] | pids["controller_finish"] <= pids["fit"]
    assert pids["worker"] and not pids["worker"] & pids["fit"], pids
