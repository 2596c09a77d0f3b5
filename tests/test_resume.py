"""--resume from the study's own trial records (orchestrator.record.ledger, orchestrator.tuner.resume), in-process: which trials
end, run again or are new; an Optuna study seeded with what ended; a resuming worker falling
back to the checkpoint before an unusable latest one. The end-to-end cycles (Ctrl-C, a killed
driver) are in test_reliability.py."""

import json
import math

import optuna
import pytest
import torch

from orchestrator import record
from orchestrator.launch import plan_fingerprint
from orchestrator.record import LaunchFile
from orchestrator.study.load import load_raw, parse, plan
from orchestrator.study.space import config_key, grid_points
from orchestrator.tuner import resume, searchers


def stage_of(name: str, smoke: bool = True, index: int = 0):
    raw, src = load_raw(name=name)
    return plan(parse(raw, src), src, smoke=smoke).stages[index]


def test_a_resumed_grid_runs_the_unfinished_trials_again_and_only_the_points_left():
    search = stage_of("width", index=-1).search  # the main stage: widths x the three arms
    points = grid_points(search)
    assert len(points) == len({config_key(p) for p in points}) >= 3
    records = [
        {"trial_id": "a", "config": points[0], "status": "completed"},
        {"trial_id": "b", "config": points[1], "status": "failed"},
        {"trial_id": "c", "config": points[2], "status": "running", "train_run": "train-x"},
    ]
    ended, unfinished = record.split(records)
    assert [r["trial_id"] for r in ended] == ["a", "b"] and [r["trial_id"] for r in unfinished] == ["c"]
    assert resume.remaining_grid(search, records) == points[3:]
    # the unfinished trial goes on in the Train run it first had (train-x), found by its config
    assert resume.resume_map(unfinished) == {config_key(points[2]): "train-x"}


def test_two_unfinished_trials_with_one_config_start_again_instead_of_sharing_a_train_run():
    cfg = {"seed": 1}
    unfinished = [
        {"trial_id": "a", "config": cfg, "status": "running"},
        {"trial_id": "b", "config": cfg, "status": "running"},
        {"trial_id": "c", "config": {"seed": 2}, "status": "running"},
    ]
    assert resume.resume_map(unfinished) == {config_key({"seed": 2}): "train-c"}


def test_a_grid_searched_num_samples_times_is_matched_as_a_multiset():
    search = stage_of("width").search
    from dataclasses import replace

    twice = replace(search, num_samples=2)
    object.__setattr__(twice, "_specs", search.param_specs())
    points = grid_points(twice)
    assert len(points) == 2 * len(grid_points(search))
    done = [{"trial_id": "a", "config": points[0], "status": "completed"}]
    assert len(resume.remaining_grid(twice, done)) == len(points) - 1


def test_an_optuna_study_is_seeded_with_the_ended_trials_and_their_values():
    search = stage_of("sensitivity").search
    base = {"method_args": {"alpha": 0.01, "mixup_a": 0.2, "delta": 0.1, "lr_beta": 0.1}}
    # a record holds the trial's last result: its validation numbers (what Optuna was told) and
    # its test numbers, which must not reach the new study
    test = {m: 0.9 for m in search.metrics}
    ended = [
        {"config": base, "metrics": {**test, **{m: 0.5 + i for i, m in enumerate(search.objectives)}}},
        {"config": base, "metrics": {**test, **{m: float("nan") for m in search.objectives}}},  # diverged
        {"config": base, "metrics": {}},
    ]  # failed before a result
    assert search.objectives == ["val/clean_acc", "val/robust_acc"]
    storage = searchers.seeded_study(search, optuna.samplers.RandomSampler(seed=0), ended, "s")
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    assert trials[0].values == [0.5 + i for i in range(len(search.objectives))]
    assert trials[0].params == {
        "method_args/alpha": 0.01,
        "method_args/mixup_a": 0.2,
        "method_args/delta": 0.1,
        "method_args/lr_beta": 0.1,
    }


def test_a_resumed_optuna_study_continues_in_its_database(tmp_path):
    """With a database, the launch's own study goes on: trials a killed driver left RUNNING are
    FAIL (their points run again), the ended ones are not added twice; a new database is seeded
    with the ended trials as in memory."""
    search = stage_of("sensitivity").search
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sampler = optuna.samplers.RandomSampler(seed=0)
    first = optuna.create_study(study_name="s", storage=url, directions=["maximize", "maximize"])
    done = first.ask()
    done.suggest_float("method_args/alpha", 0.001, 0.5, log=True)
    first.tell(done, [0.8, 0.6])
    running = first.ask()
    running.suggest_float("method_args/alpha", 0.001, 0.5, log=True)
    ended = [{"config": {"method_args": {"alpha": 0.01}}, "metrics": dict(zip(search.objectives, [0.8, 0.6]))}]
    searchers.seeded_study(search, sampler, ended, "s", url)
    assert [t.state.name for t in optuna.load_study(study_name="s", storage=url).trials] == ["COMPLETE", "FAIL"]
    searchers.seeded_study(search, sampler, ended, "other", url)  # a stage new to the database
    (seeded,) = optuna.load_study(study_name="other", storage=url).trials
    assert seeded.values == [0.8, 0.6] and seeded.params == {"method_args/alpha": 0.01}


def test_the_plan_fingerprint_changes_with_what_trials_would_run():
    raw, src = load_raw(name="sensitivity")
    study = parse(raw, src)
    a = plan_fingerprint(plan(study, src, smoke=True))
    assert a == plan_fingerprint(plan(study, src, smoke=True))
    assert a != plan_fingerprint(plan(study, src, smoke=False))
    assert a != plan_fingerprint(plan(study, src, smoke=True, overrides={"base": {"epochs": 2}}))
    assert a != plan_fingerprint(plan(study, src, smoke=True, overrides={"seed": 5}))


def _write_ckpt(d, epoch):
    d.mkdir(parents=True)
    torch.save({"format": "sprout-orchestrator/1", "epoch": epoch, "model": {"w": torch.ones(2)}}, d / "checkpoint.pt")


def test_a_resuming_worker_falls_back_to_the_checkpoint_before_an_unusable_latest_one(tmp_path):
    import ray.train

    from orchestrator.tuner.worker import load_resume_state
    from trainables.errors import CheckpointError

    run = tmp_path / "train-x"
    _write_ckpt(run / "checkpoint_2026-01-01_00-00-01.000000", 1)
    _write_ckpt(run / "checkpoint_2026-01-01_00-00-02.000000", 2)
    _write_ckpt(run / "checkpoint_2026-01-01_00-00-03.000000", 3)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    latest = run / "checkpoint_2026-01-01_00-00-03.000000"
    state, saved = load_resume_state(ray.train.Checkpoint(str(latest)))
    assert state["epoch"] == 3 and saved is None
    said = []
    (latest / "checkpoint.pt").write_bytes(b"")  # 0 bytes
    state, _ = load_resume_state(ray.train.Checkpoint(str(latest)), said.append)
    assert state["epoch"] == 2 and len(said) == 1 and "unusable" in said[0]
    mid = run / "checkpoint_2026-01-01_00-00-02.000000"
    (mid / "checkpoint.pt").write_bytes((mid / "checkpoint.pt").read_bytes()[:200])  # truncated
    assert load_resume_state(ray.train.Checkpoint(str(latest)))[0]["epoch"] == 1
    (run / "checkpoint_2026-01-01_00-00-01.000000" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint to resume from in .*train-x"):
        load_resume_state(ray.train.Checkpoint(str(latest)))


def test_a_record_keeps_only_what_json_can_hold():
    rec = record.plain({"a": float("nan"), "b": (1, 2), "c": object})
    assert math.isnan(rec["a"]) and rec["b"] == [1, 2] and isinstance(rec["c"], str)
    assert json.loads(json.dumps(rec))["b"] == [1, 2]


def test_a_trial_that_resumes_another_replaces_its_record(tmp_path):
    """The ledger callback on a resumed trial: its record names the first Train run and the
    first record is superseded, so the summary lists the trial once."""
    from types import SimpleNamespace

    launch_file = LaunchFile(tmp_path)
    launch_file.start({"study": "s"})
    cfg = {"seed": 1}
    resume.TrialLedger(launch_file, "main").on_trial_start(0, [], SimpleNamespace(trial_id="a", config=cfg))
    resumed = resume.TrialLedger(launch_file, "main", {config_key(cfg): "train-a"})
    resumed.on_trial_start(0, [], SimpleNamespace(trial_id="b", config=cfg))
    store = launch_file.read()
    assert store["ledger"]["main/a"]["superseded_by"] == "b"
    assert store["ledger"]["main/b"]["train_run"] == "train-a" and store["ledger"]["main/b"]["resumes"] == "a"
    assert [r["trial_id"] for r in record.stage_records(store, "main")] == ["b"]
