"""Seeds: a stage's points repeated per seed as trials of their own, a search that learns and
chooses on their means and suggests the same points whatever order its trials end in, and the
mean and sample standard deviation in the summary files, the console table and the report."""

import csv
import dataclasses
import json
import math
import statistics

import pytest

from orchestrator.study import grid_points, load_raw, parse, plan
from trainables.errors import ConfigError


def width_plan(**overrides):
    raw, src = load_raw(name="width")
    return plan(parse(raw, src), src, smoke=True, overrides=overrides)


def test_seeds_repeat_every_grid_point_with_its_own_seed_and_starting_model():
    p = width_plan(seeds=[0, 1])
    natural, main = p.stages
    points = grid_points(main.search)
    assert len(points) == 2 * 3 * 2  # widths x arms x seeds
    assert sorted({pt["seed"] for pt in points}) == [0, 1]
    assert len({json.dumps(pt, sort_keys=True) for pt in points}) == len(points)  # no two trials alike
    assert [pt["seed"] for pt in grid_points(natural.search)] == [0, 1, 0, 1]
    # each seed's SPROUT starts from the natural model of its own width and seed
    from orchestrator.study import stage_refs

    assert stage_refs(main) == {f"stage:natural/model_args.width={w},seed={s}" for w in (1, 2) for s in (0, 1)}


def test_seeds_are_refused_where_they_cannot_mean_anything():
    with pytest.raises(ConfigError, match="seeds: expected no searched 'seed' parameter"):
        raw, src = load_raw(name="sensitivity")
        raw["search"]["params"]["seed"] = {"type": "int", "low": 0, "high": 9}
        plan(parse(raw, src), src, overrides={"seeds": [0, 1]})
    for bad, message in (
        ([1, 1], "distinct seeds"),
        ([-1], r"integers in \[0, 2\^32\)"),
        (list(range(101)), "at most 100"),
    ):
        with pytest.raises(ConfigError, match=message):
            width_plan(seeds=bad)


def rows():
    def row(trial, seed, robust, clean, width=1):
        return {"trial_id": trial, "stage": "main", "status": "completed", "searched": {"model_args.width": width, "seed": seed},
                "seed_group": f"w{width}", "config": {"method": "sprout", "model": "wrn", "dataset": "cifar10"},
                "metrics": {"test/robust_acc": robust, "test/clean_acc": clean, "test/robust_acc_min_n": 100},
                "mlflow_run_id": None, "finalist": True}  # fmt: skip

    return [row("a", 0, 0.60, 0.90), row("b", 1, 0.64, 0.92), row("c", 2, 0.65, 0.91), row("d", 0, 0.5, 0.8, width=2)]


def test_the_mean_and_sample_sd_across_seeds_reach_the_summary_the_table_and_the_report(tmp_path):
    from orchestrator.results.summary import seed_summaries, write_summary
    from orchestrator.results.tables import table

    (g,) = seed_summaries(rows())  # width 2 has one seed: no spread to give
    assert g["seeds"] == [0, 1, 2] and g["trial_ids"] == ["a", "b", "c"] and g["point"] == {"model_args.width": 1}
    assert g["mean"]["test/robust_acc"] == pytest.approx(statistics.fmean([0.60, 0.64, 0.65]))
    assert g["sd"]["test/robust_acc"] == pytest.approx(statistics.stdev([0.60, 0.64, 0.65]))  # sample sd (n - 1)
    jpath, cpath = write_summary(tmp_path, "width", rows())
    assert json.loads(jpath.read_text())["seed_groups"][0]["n"] == 3
    lines = list(csv.DictReader(cpath.open()))
    mean = next(r for r in lines if r["trial_id"] == "mean(a,b,c)")
    sd = next(r for r in lines if r["trial_id"] == "sd(a,b,c)")
    assert float(mean["test/robust_acc"]) == pytest.approx(0.63) and float(sd["test/robust_acc"]) > 0
    assert mean["status"] == "mean over seeds 0,1,2"
    text = table(rows())
    assert (
        "across seeds 0,1,2 (3 trials), mean ± sd on all their test images: width=1: clean% 91.0±1.0, robust% 63.0±2.6"
        in " ".join(text.split())
    )


def sensitivity_plan(**overrides):
    raw, src = load_raw(name="sensitivity")
    return plan(parse(raw, src), src, overrides=overrides)


def fake_result(config: dict, objectives: list[str]) -> dict:
    """A validation result that is a fixed function of the trial's point and seed."""
    a = config["method_args"]
    x = math.log(a["alpha"]) + a["mixup_a"] + a["delta"] - a["lr_beta"] + 0.01 * config.get("seed", 0)
    return {objectives[0]: 0.5 + 0.4 * math.sin(x), objectives[1]: 0.5 + 0.4 * math.cos(3 * x)}


def drive(searcher, objectives, cap: int, finish, total: int):
    """Ray Tune's use of a searcher: fill every free slot, then end one running trial (``finish``
    picks which: the order in which trials end on a busy machine). Returns the configs in the
    order they were suggested, and what each trial's id was."""
    running, given, n = [], [], 0
    while n < total or running:
        while len(running) < cap and n < total:
            config = searcher.suggest(f"t{n}")
            if config is None:
                break
            running.append((f"t{n}", config))
            given.append(config)
            n += 1
        tid, config = running.pop(finish(len(running)))
        searcher.on_trial_complete(tid, result=fake_result(config, objectives))
    return given


def searched_by(stage, records=(), cap=2):
    from orchestrator.tuner.stage import plan_stage

    sp = plan_stage(stage, 0, cap, list(records), "s")
    return sp.tune_config.search_alg, sp.todo


def test_a_search_suggests_the_same_points_whatever_order_its_trials_end_in():
    """One seed, one result: which of two concurrent trials ends first depends on the machine's
    load. In batches (the default) Optuna is asked only once every running trial has ended, so
    the points do not depend on it; a free slot asking at once (batch: false) gives other points."""
    (stage,) = sensitivity_plan(num_samples=8).stages
    objectives = stage.search.objectives
    first, last = (lambda k: 0), (lambda k: k - 1)
    runs = [drive(searched_by(stage)[0], objectives, 2, order, 8) for order in (first, last)]
    assert len(runs[0]) == 8 and runs[0] == runs[1]
    unbatched = dataclasses.replace(stage, search=dataclasses.replace(stage.search, batch=False))
    runs = [drive(searched_by(unbatched)[0], objectives, 2, order, 8) for order in (first, last)]
    assert runs[0] != runs[1]


def test_a_seeded_search_runs_each_point_once_per_seed_and_learns_its_mean():
    (stage,) = sensitivity_plan(num_samples=4, seeds=[0, 1, 2]).stages
    objectives = stage.search.objectives
    searcher, todo = searched_by(stage, cap=3)
    assert todo == 12
    given = drive(searcher, objectives, 3, lambda k: k - 1, todo)
    points = [json.dumps({k: v for k, v in c.items() if k != "seed"}, sort_keys=True) for c in given]
    assert [c["seed"] for c in given] == [0, 1, 2] * 4 and len(set(points)) == 4
    assert all(points[i] == points[i - i % 3] for i in range(12))  # a point's seeds one after another
    study = searcher.searcher.inner._ot_study  # what Optuna learned: one trial per point, its mean
    told = [v for t in study.trials for v in t.values]
    expect = [statistics.mean(fake_result(c, objectives)[o] for c in given[i : i + 3]) for i in range(0, 12, 3)
              for o in objectives]  # fmt: skip
    assert told == pytest.approx(expect)


def test_a_resumed_seeded_search_runs_only_the_seeds_a_point_still_lacks():
    (stage,) = sensitivity_plan(num_samples=3, seeds=[0, 1]).stages
    objectives = stage.search.objectives
    given = drive(searched_by(stage)[0], objectives, 2, lambda k: 0, 6)

    def record(config, status="completed"):
        return {"stage": stage.name, "trial_id": str(id(config)), "status": status, "config": config,
                "metrics": fake_result(config, objectives)}  # fmt: skip

    # the first point ended with both seeds, the second with seed 0 only (seed 1 was running)
    records = [record(given[0]), record(given[1]), record(given[2]), record(given[3], status="running")]
    searcher, todo = searched_by(stage, records)
    assert todo == 2 * 2 - 1  # the second point's seed 1, and the third point's two seeds
    again = drive(searcher, objectives, 2, lambda k: 0, todo)
    assert again[0] == given[3]  # the running trial's config again (it resumes its Train run)
    assert [c["seed"] for c in again] == [1, 0, 1]
    told = [t.values for t in searcher.searcher.inner._ot_study.trials if t.values]
    second = [statistics.mean(fake_result(c, objectives)[o] for c in (given[2], given[3])) for o in objectives]
    assert any(v == pytest.approx(second) for v in told)
