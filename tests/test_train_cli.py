"""The Ray-free command: a short seeded run on digits for natural, SPROUT and PGD-AT."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

from trainables.train import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for method in ("natural", "sprout", "pgd_at"):
        d = tmp_path_factory.mktemp(method)
        assert (
            main(
                [
                    "--method",
                    method,
                    "--dataset",
                    "digits",
                    "--epochs",
                    "10",
                    "--seed",
                    "0",
                    "--output-dir",
                    str(d),
                    "--set",
                    "monitor.every=0",
                ]
            )
            == 0
        )
        out[method] = (d, json.loads((d / "metrics.json").read_text()))
    return out


@pytest.mark.slow  # the runs fixture trains 3 methods for 10 epochs
def test_robust_methods_beat_natural_under_pgd(runs):
    pgd = {m: r["final"]["pgd20_acc"] for m, (_, r) in runs.items()}
    clean = {m: r["final"]["clean_acc"] for m, (_, r) in runs.items()}
    assert clean["natural"] > 0.9 and clean["sprout"] > 0.85
    assert pgd["sprout"] > pgd["natural"] + 0.05, pgd
    assert pgd["pgd_at"] > pgd["natural"] + 0.05, pgd


@pytest.mark.slow  # the runs fixture trains 3 methods for 10 epochs
def test_outputs_hold_config_history_and_checkpoint(runs):
    import torch

    d, r = runs["sprout"]
    assert r["config"]["method_args"]["variant"] == "paper" and len(r["history"]) == 10
    assert {"loss", "lr", "epoch_time_s", "images_per_s"} <= set(r["history"][0])
    ck = torch.load(d / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 10 and "beta" in ck["method"] and ck["config"]["model"] == "small_cnn"


@pytest.mark.slow  # the runs fixture trains 3 methods for 10 epochs
def test_same_seed_same_numbers(runs, tmp_path):
    main(
        [
            "--method",
            "sprout",
            "--epochs",
            "10",
            "--seed",
            "0",
            "--output-dir",
            str(tmp_path),
            "--set",
            "monitor.every=0",
        ]
    )
    again = json.loads((tmp_path / "metrics.json").read_text())
    first = runs["sprout"][1]
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in first["history"]]
    assert again["final"]["pgd20_acc"] == first["final"]["pgd20_acc"]


@pytest.mark.slow  # the runs fixture trains 3 methods for 10 epochs
def test_start_from_a_checkpoint(runs, tmp_path):
    src = runs["natural"][0] / "checkpoint.pt"
    main(["--method", "sprout", "--epochs", "1", "--init-checkpoint", str(src), "--output-dir", str(tmp_path)])
    r = json.loads((tmp_path / "metrics.json").read_text())
    assert r["final"]["clean_acc"] > 0.8  # one epoch from random weights would not get here


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'; expected one of: backward_smoothing, fast_at"),
        (["--model", "resnet9"], "unknown model 'resnet9'; expected one of:"),
        (["--dataset", "mnist"], "unknown data set 'mnist'; expected one of: cifar10, cifar100, digits, imagenet"),
    ],
)
def test_unknown_names_are_refused_with_the_valid_ones(args, message, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "trainables.train", *args, "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()
