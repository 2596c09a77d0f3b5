"""Paired tests between certified trials on the same test images: McNemar's exact test on the
per-image worst case, for each trial against the paper defaults and the best against the
runner-up; and the Wilson interval from scipy."""

import math

import pytest

from orchestrator.results.paired import paired_tests
from orchestrator.study import mcnemar, wilson


def test_mcnemar_counts_only_the_discordant_images_and_matches_the_binomial_tail():
    a = "1" * 60 + "1" * 12 + "0" * 3 + "0" * 25  # 72 right
    b = "1" * 60 + "0" * 12 + "1" * 3 + "0" * 25  # 63 right: 12 images right under a alone, 3 under b alone
    t = mcnemar(a, b)
    assert (t["n"], t["a_only"], t["b_only"]) == (100, 12, 3) and t["difference"] == pytest.approx(0.09)
    # two-sided exact: 2 * P(X <= 3) for X ~ Binomial(15, 1/2)
    assert t["p_value"] == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)
    assert mcnemar(a, a)["p_value"] == 1.0  # no discordant image: nothing to tell apart


def test_wilson_is_scipys_and_the_closed_form():
    z = 1.959964
    for p, n in ((0.7, 100), (0.0, 30), (1.0, 7), (0.55, 10_000)):
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson(p, n) == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-6)


def row(trial, bits, default=False, stage="main"):
    acc = bits.count("1") / len(bits)
    return {"trial_id": trial, "stage": stage, "status": "completed", "certified": True, "paper_default": default,
            "worst_case_per_image": bits, "metrics": {"test/robust_acc": acc}}  # fmt: skip


def test_each_finalist_is_tested_against_the_paper_defaults_and_the_best_against_the_runner_up():
    rows = [
        row("best", "1" * 90 + "0" * 10),
        row("second", "1" * 80 + "0" * 10 + "1" * 8 + "0" * 2),  # 10 images right under best alone, 8 under it
        row("default", "1" * 50 + "0" * 50, default=True),
        row("alone", "1" * 10, stage="other"),  # one certified trial: no pair in its stage
        {"trial_id": "x", "stage": "main", "status": "completed", "metrics": {}},  # not certified
    ]
    tests = paired_tests(rows)
    pairs = [(t["a"], t["against"], t["b"]) for t in tests]
    assert pairs == [
        ("best", "paper defaults", "default"),
        ("second", "paper defaults", "default"),
        ("best", "runner-up", "second"),
    ]
    by = {(t["a"], t["b"]): t for t in tests}
    assert by[("best", "default")]["verdict"].startswith("best vs paper defaults (default): +40.0 points, p = ")
    assert "distinguishable on 100 images" in by[("best", "default")]["verdict"]
    assert by[("best", "default")]["p_value"] < 1e-6 and "not distinguishable" in by[("best", "second")]["verdict"]


def test_a_robustbench_claim_says_what_it_is_not():
    from orchestrator.certify.export import robustbench_info

    config = {"method": "trades", "dataset": "cifar10", "model": "wrn", "model_args": {"depth": 34, "width": 10}}
    full = {"eps": 8 / 255, "clean_acc": 0.8492, "autoattack_acc": 0.5308, "autoattack_n": 10_000}
    info = robustbench_info("main", "t1", config, full, "compare")
    assert (info["architecture"], info["eps"], info["clean_acc"], info["autoattack_acc"]) == (
        "WideResNet-34-10", "8/255", "84.92", "53.08")  # fmt: skip
    assert "footnote" not in info and info["additional_data"] is False and info["number_forward_passes"] == 1
    partial = robustbench_info("main", "t1", config, {**full, "eps": 0.031, "autoattack_n": 1000}, "compare")
    assert partial["eps"] == "0.031" and "on 1000 of the 10000 test images" in partial["footnote"]
