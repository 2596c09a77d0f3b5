"""Certification in shards across Ray tasks: one model's certification in one shard against the
same in K shards, on a local Ray of the machine's CPUs (one CPU per shard task, as a CPU trial's
worker has), through the sweep's own certification phase (``orchestrator.certify.phase``).

    python bench/certify_cost.py                          # quick protocol, AutoAttack on all 100 images, 2 shards
    python bench/certify_cost.py --images 200 --shards 2 --json bench/results/certify_cost-cpu.json

Prints the wall time of each run (the time a person waits, Ray task start-up included), their
ratio, and whether the union of the shards gave the same numbers as one shard. The protocol runs
AutoAttack on every image, so every shard holds the same work (a protocol that runs AutoAttack
on its first n images only puts it in the first shards: choose ``certify.shard_size`` at most
n / GPUs there). Repeats alternate the two settings; the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, save  # noqa: E402


def checkpoint_dir(root: Path, epochs: int) -> str:
    """A SPROUT digits model trained here, in a checkpoint directory as a trial leaves one."""
    from trainables.checkpoint import save_checkpoint
    from trainables.config import resolve
    from trainables.loop import build, checkpoint_state, fit

    comp = build(resolve({"method": "sprout", "epochs": epochs, "monitor": {"every": 0}}))
    fit(comp)
    d = root / "checkpoint"
    save_checkpoint(checkpoint_state(comp, epochs), d / "checkpoint.pt")
    return str(d)


def certify(ckpt: str, config: dict, images: int, shards: int, storage: Path, run: int) -> tuple[float, dict]:
    from orchestrator.certify import phase

    overrides = {"n": images, "autoattack.n": images, "curve.n": images, "large_eps.n": images, "cw_l2.n": images}
    settings = phase.Settings(
        protocol="quick",
        overrides=overrides,
        seed=0,
        shard_size=-(-images // shards),
        transfer_source=None,
        keep_adversarial=False,
        cpus=1.0,
        gpus=0.0,
    )
    f = phase.Finalist("bench", f"k{shards}-{run}", config, ckpt, str(storage / f"k{shards}-{run}"))
    t0 = time.perf_counter()
    phase.plan([f], settings)
    phase.run([f], settings, say=lambda line: None)
    return time.perf_counter() - t0, f.result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    import os

    import ray

    from trainables.config import resolve
    from trainables.schema import to_dict

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        ckpt = checkpoint_dir(root, args.epochs)
        config = to_dict(resolve({"method": "sprout"}))
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",
            num_cpus=args.shards,
            include_dashboard=False,
            logging_level="ERROR",
            _temp_dir=tempfile.mkdtemp(prefix="cb"),
        )
        try:
            certify(ckpt, config, 4, args.shards, root, -1)  # start the task processes once (torch imported)
            times = {1: [], args.shards: []}
            results = {}
            for run in range(args.repeats):
                for k in (1, args.shards):
                    t, results[k] = certify(ckpt, config, args.images, k, root, run)
                    times[k].append(t)
        finally:
            ray.shutdown()
    one, many = median(times[1]), median(times[args.shards])
    keys = ("test/clean_acc", "test/fgsm_acc", "test/cw_l2_acc", "test/inv_rotation_acc")
    same = all(json.dumps(results[1][k]) == json.dumps(results[args.shards][k]) for k in keys)
    aa = (results[1]["test/autoattack_acc"], results[args.shards]["test/autoattack_acc"])
    out = {
        "images": args.images,
        "shards": args.shards,
        "protocol": "quick, AutoAttack on every image",
        "seconds_1_shard": times[1],
        f"seconds_{args.shards}_shards": times[args.shards],
        "speedup": one / many,
        "deterministic_numbers_equal": same,
        "autoattack_acc_1_vs_k": aa,
    }
    print(
        f"certification of one model, {args.images} images: 1 shard {one:.1f} s, {args.shards} shards {many:.1f} s "
        f"(median of {args.repeats}); speed-up {one / many:.2f}x on {args.shards} CPUs"
    )
    print(f"deterministic attacks equal across the cut: {same}; AutoAttack {aa[0]:.3f} (1 shard) vs {aa[1]:.3f}")
    p = save(out, args.json, "certify_cost-cpu")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
