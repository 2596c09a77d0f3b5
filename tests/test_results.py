"""What a study leaves for people, on canned results (no Ray, no training): number formats, the
summary rows and files, the console's progress lines, and the MLflow runs the tracker and the
trial callback write into a real SQLite store."""

import csv
import json
import time
from types import SimpleNamespace

import pytest

from orchestrator.record import LaunchFile, TrialStatus, error_cause
from orchestrator.results.format import num, pct, pm, short
from orchestrator.results.summary import add_certification, add_intervals, rows_from_records, write_summary
from orchestrator.study.load import load_raw, parse, plan


def sensitivity_stage():
    raw, src = load_raw(name="sensitivity")
    return plan(parse(raw, src), src, smoke=True).stages[0]


# ----------------------------------------------------------------------------- format
def test_numbers_read_one_way_everywhere():
    assert pct(0.7123) == "71.2" and pct(None) == "-" and pct(float("nan")) == "-" and pct("x") == "-"
    # 71 of 100 images: the Wilson interval's half-width is about 9 points (../shared/REFERENCE.md)
    assert pm({"clean_acc": 0.71, "n_eval": 100}, "clean_acc") == "71.0±9"
    assert pm({"clean_acc": 0.71, "n_eval": 10_000}, "clean_acc") == "71.0±1"
    assert pm({"clean_acc": 0.71}, "clean_acc") == "71.0"  # no image count: no interval
    assert num(None) == "-" and num(float("nan")) == "nan" and num(0.000123456) == "0.000123" and num(True) == "True"
    assert short(0.0123456) == "0.01235" and short(3) == "3" and short("paper") == "paper"


# ----------------------------------------------------------------------------- summary
def records():
    given = {"method_args": {"alpha": 0.01, "mixup_a": 0.2, "delta": 0.1, "lr_beta": 0.01}}
    other = {"method_args": {"alpha": 0.3, "mixup_a": 0.5, "delta": 0.2, "lr_beta": 0.1}}
    resolved = {"method": "sprout", "model": "small_cnn", "dataset": "digits", **given}
    return [
        {
            "trial_id": "b2",
            "config": other,
            "status": "failed",
            "error": "ValueError: bad",
            "metrics": {},
            "checkpoint": None,
        },
        {
            "trial_id": "a1",
            "config": given,
            "status": "completed",
            "checkpoint": "/ck/a1",
            "resumes": "a0",
            "metrics": {
                "resolved_config": json.dumps(resolved),
                "val/robust_acc": 0.6,
                "val/n_eval": 287,
                "val/robust_acc_min_n": 287,
                "val/clean_acc": 0.9,
                "val/masking_flags": [],
                "epoch_time_s": 1.5,
                "images_per_s": 800.0,
                "node_id": "n1",
                "device": "cpu",
                "training_iteration": 3,
            },
        },
    ]


def test_summary_rows_from_the_ledger_say_what_ran_where_and_how_it_was_chosen():
    stage = sensitivity_stage()
    rows = rows_from_records(
        records(), study="sensitivity", stage=stage, refs={}, run_id_of=lambda key: {"main/a1": "run-a1"}.get(key)
    )
    assert [r["trial_id"] for r in rows] == ["a1", "b2"]  # sorted by trial id
    a1, b2 = rows
    assert a1["config"]["method"] == "sprout" and a1["config"]["model"] == "small_cnn"  # what the worker resolved
    assert a1["placement"] == {"node_id": "n1", "device": "cpu"} and "node_id" not in a1["metrics"]
    assert "training_iteration" not in a1["metrics"]  # Tune's own counters are not the trial's numbers
    assert a1["paper_default"] and not b2["paper_default"]  # the enqueued paper defaults are recognised
    assert a1["resumed_from_trial"] == "a0" and a1["mlflow_run_id"] == "run-a1"
    assert a1["search"].startswith("Optuna TPE (2 objectives")
    # a trial that failed before reporting keeps the config it was given, merged over the base
    assert b2["status"] == "failed" and b2["error"] == "ValueError: bad" and b2["mlflow_run_id"] is None
    assert b2["config"]["method_args"]["alpha"] == 0.3 and b2["config"]["method"] == "sprout"


def test_summary_files_hold_every_trial_its_intervals_and_its_test_numbers(tmp_path):
    stage = sensitivity_stage()
    rows = rows_from_records(records(), study="sensitivity", stage=stage, refs={}, run_id_of=lambda key: None)
    add_certification(
        rows[0],
        {
            "test/robust_acc": 0.7,
            "test/n_eval": 100,
            "test/robust_acc_min_n": 100,
            "test/clean_acc": 0.99,
            "test/masking_flags": ["one_step_beats_iterative"],
        },
    )
    add_intervals(rows)
    lo, hi = rows[0]["ci95"]["test/robust_acc"]
    assert lo < 0.7 < hi and 0.15 < hi - lo < 0.2  # ±9 points on 100 images (the worst case's count)
    assert "test/robust_acc" not in rows[1].get("ci95", {})  # not certified: no test number, no interval
    assert rows[0]["ci95"]["val/robust_acc"][1] - rows[0]["ci95"]["val/robust_acc"][0] < hi - lo  # 287 images
    jpath, cpath = write_summary(tmp_path, "sensitivity", rows, {"tracking_uri": "sqlite:////x"})
    s = json.loads(jpath.read_text())
    assert s["study"] == "sensitivity" and s["tracking_uri"] == "sqlite:////x" and len(s["trials"]) == 2
    table = list(csv.DictReader(cpath.open()))
    assert [r["trial_id"] for r in table] == ["a1", "b2"]
    assert table[0]["test/robust_acc"] == "0.7" and table[1]["test/robust_acc"] == ""
    assert table[0]["method_args.alpha"] == "0.01" and table[0]["test_masking_flags"] == "one_step_beats_iterative"
    assert table[1]["status"] == "failed"


# ----------------------------------------------------------------------------- progress
def trial(trial_id, config, last_result=None, error=None):
    return SimpleNamespace(trial_id=trial_id, config=config, last_result=last_result or {}, get_error=lambda: error)


def test_progress_says_each_epoch_the_searched_values_once_and_each_ending(capsys):
    from orchestrator.results.progress import Progress

    p = Progress("main", total=2)
    t = trial("a1", {"method_args": {"alpha": 0.0123456}})
    p.on_trial_result(
        0,
        [],
        t,
        {
            "epoch": 1,
            "loss": 0.5,
            "images_per_s": 812.4,
            "monitor_clean_acc": 0.9,
            "monitor_pgd_acc": 0.5,
            "monitor_split": "val",
        },
    )
    p.on_trial_result(0, [], t, {"epoch": 2, "loss": 0.4, "images_per_s": 800.0})
    p.on_trial_result(0, [], t, {"epoch": 2, "final": True})  # the final result is said by the ending line
    t.last_result = {
        "status": "completed",
        "val/clean_acc": 0.9,
        "val/robust_acc": 0.6,
        "val/masking_flags": ["zero_input_gradients"],
    }
    p.on_trial_complete(0, [], t)
    bad = trial("b2", {}, error=RuntimeError("\x1b[31mCUDA out of memory\x1b[0m"))
    p.on_trial_error(0, [], bad)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "[main] trial a1 epoch 1: loss 0.5000  monitor (val) clean 0.900 robust 0.500  812 img/s"
    )
    assert lines[0].endswith("[alpha=0.01235]") and "alpha" not in lines[1]
    assert len(lines) == 4
    assert lines[2].startswith(
        "[main] 1/2 trial a1 completed  val clean 0.9000 robust 0.6000  masking FLAGGED: zero_input_gradients"
    )
    assert lines[3].startswith("[main] 2/2 trial b2 failed (RuntimeError: CUDA out of memory)")


def test_a_trial_stopped_by_the_scheduler_says_so(capsys):
    from orchestrator.results.progress import Progress

    p = Progress("main", total=3, done=1)
    p.on_trial_complete(0, [], trial("c3", {}, {"epoch": 1}))  # no final status from the worker: ASHA stopped it
    assert capsys.readouterr().out.startswith("[main] 2/3 trial c3 stopped early")


def test_a_failed_trials_cause_is_one_short_line_whatever_the_exception_holds():
    dump = "shape mismatch for\n" + "\n".join("tensor([[" + ", ".join(["0.1234"] * 50) + "]])" for _ in range(20_000))
    cause = error_cause(ValueError(dump))
    assert cause.startswith("ValueError: shape mismatch for") and len(cause) <= 300
    wrapped = RuntimeError("Trial raised")
    wrapped.__cause__ = KeyError("missing")
    assert error_cause(wrapped) == "KeyError: 'missing'"
    assert error_cause("Traceback (most recent call last):\n  File x\nValueError: y") == "ValueError: y"
    assert len(error_cause(ValueError("x" * 5000))) == 300 and error_cause(ValueError("x" * 5000)).endswith("…")


# ----------------------------------------------------------------------------- tracking
@pytest.fixture
def tracker(tmp_path):
    from orchestrator.results.tracking import Tracker

    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "s", tmp_path, LaunchFile(tmp_path))


def test_a_new_store_is_opened_while_ray_starts_and_the_tracker_uses_it(tmp_path, monkeypatch):
    """The warm-up opens a new SQLite store in a thread (its schema migrations overlap Ray's
    start); the Tracker built after it gets MLflow's store for the URI without opening another.
    An existing store, or a server, gets no thread; undo() removes only a store it made."""
    import mlflow.store.tracking.sqlalchemy_store as sa

    from orchestrator.results.tracking import StoreWarmup, Tracker

    opened = []
    real = sa.SqlAlchemyStore.__init__

    def counting(self, *a, **k):
        opened.append(a[0])
        real(self, *a, **k)

    monkeypatch.setattr(sa.SqlAlchemyStore, "__init__", counting)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    warm = StoreWarmup(uri)
    assert warm.thread is not None
    warm.wait()
    assert (tmp_path / "mlflow.db").is_file() and opened == [uri]
    Tracker(uri, "s", tmp_path, LaunchFile(tmp_path))
    assert opened == [uri]  # the warmed store, not a second one
    assert StoreWarmup(uri).thread is None and StoreWarmup("http://127.0.0.1:5000").thread is None
    other = tmp_path / "other.db"
    made = StoreWarmup(f"sqlite:///{other}")
    made.undo()
    assert not other.exists()


def test_a_launch_whose_ray_does_not_start_leaves_no_store_behind(tmp_path, monkeypatch):
    import ray

    from orchestrator.sweep import main

    out = tmp_path / "given"
    seen = []

    def fail(**kw):
        for _ in range(200):  # Ray fails while the warm-up is writing the store
            if (out / "mlflow.db").exists():
                seen.append(True)
                break
            time.sleep(0.05)
        raise RuntimeError("no Ray here")

    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.chdir(tmp_path)
    out.mkdir()  # a directory the user named: it stays, without a store (Ray's own logs stay in ray-tmp)
    with pytest.raises(RuntimeError, match="no Ray here"):
        main(["--study", "sensitivity", "--smoke-test", "--output-dir", str(out)])
    assert seen and out.is_dir() and not (out / "mlflow.db").exists()


def test_the_tracker_keeps_one_parent_per_launch_and_certifications_under_their_trial(tracker, tmp_path):
    pid = tracker.start_parent(
        "s", {"sampler": {"main": "grid"}}, {"git_commit": "abc"}, resume=False, launch={"plan": "f00"}
    )
    launch = json.loads((tmp_path / "launch.json").read_text())
    assert launch["parent_run_id"] == pid and launch["plan"] == "f00" and launch["study"] == "s"
    c = tracker.client
    assert c.get_run(pid).data.params["sampler.main"] == "grid" and c.get_run(pid).data.tags["kind"] == "study"
    assert c.get_experiment(tracker.experiment_id).artifact_location.endswith("mlartifacts")
    # a trial's run, left RUNNING by a killed driver, is marked KILLED when the launch resumes
    trial_run = c.create_run(tracker.experiment_id).info.run_id
    tracker.launch_file.set_trial_run_id("main/a1", trial_run)
    assert tracker.start_parent("s", {}, {}, resume=True) == pid
    assert (
        c.get_run(trial_run).info.status == "KILLED" and c.get_run(trial_run).data.tags["trial_status"] == "interrupted"
    )
    result = {"test/robust_acc": 0.7, "test/n_eval": 100, "test/masking_flags": [], "test/clean_acc": 1.0}
    first = tracker.log_certification("main", "a1", result, [], {"study": "s"})
    again = tracker.log_certification("main", "a1", result, [], {"study": "s"})
    assert first == again  # one certification run per trial, however often it is logged
    cert = c.get_run(first)
    assert cert.data.tags["mlflow.parentRunId"] == trial_run and cert.data.tags["split"] == "test"
    assert cert.data.metrics["test/robust_acc"] == 0.7 and cert.data.tags["test_masking_flags"] == "none"
    assert c.get_run(trial_run).data.metrics["test/robust_acc"] == 0.7  # the trial's run gets them too
    assert tracker.log_certification("main", "nobody", result, [], {}) is None  # a trial without a run: nothing
    tracker.finish_parent()
    assert c.get_run(pid).info.status == "FINISHED"


def test_the_trial_callback_records_a_trial_as_tune_ends_it(tracker, tmp_path):
    from orchestrator.results.callbacks import MLflowTrialCallback

    pid = tracker.start_parent("s", {}, {}, resume=False)
    cb = MLflowTrialCallback(
        tracker,
        parent_run_id=pid,
        stage="main",
        study="s",
        base={"method": "sprout", "model": "small_cnn", "dataset": "digits"},
        refs={},
        tags={},
    )
    t = trial("a1", {"method_args": {"alpha": 0.01, "lr_beta": 0.02}})
    cb.on_trial_start(0, [], t)
    run_id = tracker.launch_file.trial_run_id("main/a1")
    resolved = {"method": "sprout", "model": "small_cnn", "dataset": "digits", "method_args": {"alpha": 0.01}}
    for epoch, loss in ((1, 0.9), (2, 0.7)):
        result = {
            "epoch": epoch,
            "loss": loss,
            "resolved_config": json.dumps(resolved),
            "precision": "fp32",
            "val/n_eval": 287,
            "node_id": "n1",
        }
        t.last_result = result
        cb.on_trial_result(0, [], t, result)
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "checkpoint.pt").write_bytes(b"0" * 10)
    t.last_result = {**result, "status": "diverged", "checkpoint_path": str(ck), "val/masking_flags": ["x"]}
    cb.on_trial_complete(0, [], t)
    run = tracker.client.get_run(run_id)
    assert run.info.status == TrialStatus.DIVERGED.mlflow == "FAILED"
    assert run.data.tags["trial_status"] == "diverged" and run.data.tags["val_masking_flags"] == "x"
    assert run.data.tags["mlflow.parentRunId"] == pid and run.data.tags["searched_params"] == "alpha,gamma_beta"
    assert run.data.params["alpha"] == "0.01" and run.data.params["gamma_beta"] == "0.02"  # the paper's names
    assert run.data.params["precision"] == "fp32" and run.data.params["val/n_eval"] == "287"
    history = tracker.client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.7)]
    arts = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {"config.json", "checkpoint.pt"} <= arts
    assert run.data.tags["checkpoint"] == str(ck / "checkpoint.pt")


def test_the_papers_numbers_reach_the_summary_files_and_the_trials_mlflow_runs(tracker, tmp_path):
    from orchestrator.results.summary import add_paper
    from orchestrator.study import load_paper_numbers

    def row(trial_id, method, run_id):
        return {
            "trial_id": trial_id,
            "stage": "main",
            "config": {"method": method, "model": "vgg16"},
            "searched": {},
            "metrics": {"test/pgd20_acc": 0.5},
            "status": "completed",
            "mlflow_run_id": run_id,
        }

    run_a = tracker.client.create_run(tracker.experiment_id).info.run_id
    rows = [row("a", "sprout", run_a), row("b", "free_at", None)]
    add_paper(rows, load_paper_numbers("compare"))
    assert rows[0]["paper"]["pgd20_acc"] == 0.6224 and rows[0]["paper"]["transfer_acc"] == 0.8628
    assert "paper" not in rows[1]  # the paper gives nothing for Free-AT on VGG-16
    _, cpath = write_summary(tmp_path, "compare", rows)
    table = list(csv.DictReader(cpath.open()))
    assert table[0]["paper/pgd20_acc"] == "0.6224" and table[1]["paper/pgd20_acc"] == ""
    assert tracker.log_paper(rows) == 1
    assert tracker.client.get_run(run_a).data.metrics["paper/pgd20_acc"] == 0.6224
