"""Seeds: a grid's points repeated per seed as trials of their own, and the mean and sample
standard deviation across them in the summary files, the console table and the report."""

import csv
import json
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
    with pytest.raises(ConfigError, match="seeds: expected a grid search"):
        raw, src = load_raw(name="sensitivity")
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
