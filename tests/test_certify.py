"""Certification in shards: the union of a sharded evaluation equals an unsharded one, a shard's
result survives JSON, and a shard's file is read back only when it is one of ours for that
shard. Fast tier (no Ray, no AutoAttack); the end-to-end phase is in test_sweep.py (smoke),
test_reliability.py (killed and resumed) and test_fake_cluster.py (two nodes at once)."""

import json

import pytest
import torch

from orchestrator.certify.shards import ShardJob, cuts, read_shard, write_bytes
from trainables.evaluation import Shard, evaluate, evaluate_shard, finish, get_protocol, union

TIMES = ("eval_time_s", "attack_seconds")  # wall-clock figures: the only keys allowed to differ


def protocol():
    """Every attack family but AutoAttack (the slow tier's), on 120 images in batches of 40, the
    subsets cut where shards do not fall."""
    return get_protocol(
        "quick",
        {
            "n": 120,
            "batch_size": 40,
            "autoattack": False,
            "curve.n": 70,
            "large_eps.n": 70,
            "cw_l2.n": 25,
            "cw_l2.iterations": 30,
            "pgd.runs": [[10, 1], [10, 2]],
        },
    )


def sharded(model, digits, p, bounds, **kw):
    shards = [evaluate_shard(model, digits, p, eps=0.1, start=a, stop=b, seed=3, **kw) for a, b in bounds]
    return finish(union(shards), p, eps=0.1, dataset="digits"), shards


def without_times(r):
    """The result as JSON text (NaN equal to NaN), without its wall-clock figures."""
    return json.dumps({k: v for k, v in r.items() if k not in TIMES}, sort_keys=True, default=str)


def test_shards_on_batch_boundaries_equal_one_evaluation_exactly(natural_digits, digits):
    p = protocol()
    whole = evaluate(natural_digits, digits, p, seed=3, transfer_source=natural_digits)
    cut, _ = sharded(natural_digits, digits, p, [(0, 40), (40, 80), (80, 120)], transfer_source=natural_digits)
    assert without_times(cut) == without_times(whole)
    assert cut["n_eval"] == 120 and cut["cw_l2_n"] == 25 and 0 < cut["pgd10_acc"] < cut["clean_acc"]


def test_any_cut_gives_the_same_deterministic_numbers_and_random_ones_within_noise(natural_digits, digits):
    p = protocol()
    whole = evaluate(natural_digits, digits, p, seed=3)
    cut, shards = sharded(natural_digits, digits, p, [(0, 33), (33, 90), (90, 120)])  # not on batch boundaries
    for k in (
        "clean_acc",
        "fgsm_acc",
        "cw_l2_acc",
        "cw_l2_median_norm",
        "zero_grad_frac",
        "inv_rotation_acc",
        "inv_grayscale_acc",
        "robust_acc_min_n",
        "n_eval",
    ):
        assert json.dumps(cut[k]) == json.dumps(whole[k]), k  # no random draw: image for image the same
    for k in ("pgd10_acc", "pgd10x2_acc", "cw_linf_acc", "robust_acc_min", "large_eps_acc"):
        # random starts: within the attacks' own noise (over 6 seeds these vary by up to 6 of the 120 images)
        assert abs(cut[k] - whole[k]) <= 8 / 120 + 1e-6, (k, cut[k], whole[k])
    assert [len(s.per_image["clean"]) for s in shards] == [33, 57, 30]
    assert [len(s.per_image["cw_l2_norm"]) for s in shards] == [25, 0, 0]  # C&W-L2 on the first 25 only
    assert cut["masking_flags"] == whole["masking_flags"]


def test_a_shard_survives_json(natural_digits, digits):
    p = get_protocol("basic", {"n": 30, "batch_size": 10})
    shard = evaluate_shard(natural_digits, digits, p, eps=0.1, start=10, stop=30, seed=0)
    back = Shard.from_json(json.loads(json.dumps(shard.to_json())))
    assert back.start == 10 and back.n == 20 and set(back.per_image) == set(shard.per_image)
    for k, v in shard.per_image.items():
        assert torch.equal(back.per_image[k].to(v.dtype), v), k
    assert back.maxima == shard.maxima and back.seconds == shard.seconds


def test_shards_must_tile_the_images():
    with pytest.raises(ValueError, match="do not tile"):
        union([Shard(0, 10), Shard(20, 10)])
    assert cuts(360, 100) == [(0, 100), (100, 200), (200, 300), (300, 360)] and cuts(50, 50) == [(0, 50)]


def test_a_shard_file_counts_only_when_it_is_ours_for_that_shard(tmp_path, natural_digits, digits):
    job = ShardJob("main", "t1", 0, 20, "ckpt", str(tmp_path / "cert"), "basic", {"n": 20}, 0)
    assert read_shard(job) is None  # nothing yet: the shard runs
    shard = evaluate_shard(natural_digits, digits, get_protocol("basic", {"n": 20}), eps=0.1, seed=0)
    from dataclasses import asdict

    from orchestrator.certify.shards import SHARD_FORMAT

    good = {"format": SHARD_FORMAT, "job": asdict(job), "shard": shard.to_json()}
    write_bytes(job.path, json.dumps(good).encode())
    assert read_shard(job).n == 20
    for bad in (
        {**good, "job": {**asdict(job), "seed": 1}},  # another plan's shard
        {**good, "format": "something else"},
    ):
        write_bytes(job.path, json.dumps(bad).encode())
        assert read_shard(job) is None
    write_bytes(job.path, json.dumps(good).encode()[:100])  # truncated: runs again
    assert read_shard(job) is None


@pytest.mark.slow  # AutoAttack on 10 images
def test_autoattack_inputs_and_log_are_kept_beside_the_checkpoint(tmp_path, natural_digits, digits):
    """certify.save_adversarial: the union of the shards' AutoAttack inputs, their labels and
    test-set indices, and AutoAttack's log, written beside the finalist's checkpoint."""
    from orchestrator.certify import phase

    overrides = {
        "n": 20,
        "batch_size": 5,
        "autoattack.n": 10,
        "curve": False,
        "large_eps": False,
        "cw_l2": False,
        "transfer": False,
        "invariance": False,
        "pgd.runs": [[10, 1]],
    }
    p = get_protocol("quick", overrides)
    settings = phase.Settings(
        protocol="quick",
        overrides=overrides,
        seed=0,
        shard_size=5,
        transfer_source=None,
        keep_adversarial=True,
        cpus=1,
        gpus=0,
    )
    ckpt = tmp_path / "checkpoint"
    f = phase.Finalist("main", "t1", {"dataset": "digits", "eps": 0.1}, str(ckpt), str(tmp_path / "cert"))
    for a, b in ((0, 5), (5, 20)):
        f.done[a] = evaluate_shard(natural_digits, digits, p, eps=0.1, start=a, stop=b, seed=0, keep_adversarial=True)
    f.jobs = [None, None]  # two shards (only their number is read here)
    phase._finish(f, settings, None)
    saved = torch.load(ckpt / "autoattack_adversarial.pt", weights_only=True)
    x, y = digits.test_tensors(10)
    assert torch.equal(saved["index"], torch.arange(10)) and torch.equal(saved["y"], y)
    assert (saved["x"] - x).abs().max() <= 0.1 + 1e-6 and saved["x"].min() >= 0 and saved["x"].max() <= 1
    log = (ckpt / "autoattack.log").read_text()
    assert "[images 0-4]" in log and "[images 5-9]" in log and "robust accuracy" in log
    assert f.result["test/autoattack_n"] == 10 and str(ckpt / "autoattack_adversarial.pt") in f.files
