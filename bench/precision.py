"""bf16 measured, not assumed: each method trained in fp32 and under bf16 autocast from the same
seed, both evaluated with AutoAttack, and the difference printed.

    python bench/precision.py                                  # digits, CPU autocast
    python bench/precision.py --json bench/results/precision-cpu.json
    python bench/precision.py --device cuda --dataset cifar10 --data-root data --model wrn ...

A method whose robust accuracy (AutoAttack, per-image worst case with PGD-20) drops by more
than ``--tolerance`` points under bf16 is listed for fp32: ``trainables.methods`` keeps it in
fp32 on the GPU by default (its ``bf16_default``). Attacks always run in fp32; only the training
forwards change. Digits figures are noisy (360 test images, one seed): a difference of a point
or two is within run-to-run noise, which the output states.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name, save  # noqa: E402

METHODS = ("sprout", "pgd_at", "trades", "fast_at", "free_at")
TOLERANCE = 2.0  # points of robust accuracy bf16 may cost before a method trains in fp32


def run_one(method: str, amp: str, args, device) -> dict:
    from trainables.config import resolve
    from trainables.evaluation import evaluate, get_protocol
    from trainables.loop import build, fit

    raw = {
        "method": method,
        "dataset": args.dataset,
        "seed": args.seed,
        "monitor": {"every": 0},
        "fast": {"amp": amp, "channels_last": "off"},
    }
    for key in ("epochs", "model"):
        if getattr(args, key):
            raw[key] = getattr(args, key)
    if args.data_root:
        raw["data"] = {"root": args.data_root}
    cfg = resolve(raw)
    comp = build(cfg, device=device)
    t0 = time.perf_counter()
    fit(comp)
    train_s = time.perf_counter() - t0
    p = get_protocol("basic", {"n": args.n, "autoattack": {"n": args.n}, "checks": False})
    r = evaluate(comp.net, comp.bundle, p, eps=cfg.eps, seed=args.seed, device=device)
    return {
        "clean": 100 * r["clean_acc"],
        "pgd20": 100 * r["pgd20_acc"],
        "autoattack": 100 * r["autoattack_acc"],
        "robust": 100 * r["robust_acc_min"],
        "train_s": round(train_s, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--epochs", type=int, default=None, help="default: the data set's (digits: 15)")
    ap.add_argument("--n", type=int, default=200, help="test images for PGD-20 and AutoAttack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="points of robust accuracy")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = {}
    print(f"{'method':<12}{'precision':>10}{'clean':>8}{'PGD-20':>8}{'AA':>8}{'robust':>8}{'train s':>9}")
    for method in args.methods.split(","):
        rows[method] = {}
        for amp, label in (("off", "fp32"), ("bf16", "bf16")):
            r = rows[method][label] = run_one(method, amp, args, device)
            print(
                f"{method:<12}{label:>10}{r['clean']:>8.2f}{r['pgd20']:>8.2f}{r['autoattack']:>8.2f}"
                f"{r['robust']:>8.2f}{r['train_s']:>9.1f}",
                flush=True,
            )
        d = {k: round(rows[method]["bf16"][k] - rows[method]["fp32"][k], 2) for k in ("clean", "robust")}
        rows[method]["bf16_minus_fp32"] = d
        rows[method]["keep_fp32"] = d["robust"] < -args.tolerance
    one_image = 100 / args.n
    print(f"\nbf16 - fp32 (points; one test image = {one_image:.2f}):")
    for method, r in rows.items():
        d = r["bf16_minus_fp32"]
        print(
            f"  {method:<12} clean {d['clean']:+.2f}  robust {d['robust']:+.2f}"
            f"  -> {'fp32 by default on the GPU' if r['keep_fp32'] else 'bf16 is fine'}"
        )
    out = {
        "device": device_name(device),
        "dataset": args.dataset,
        "epochs": args.epochs,
        "n": args.n,
        "seed": args.seed,
        "tolerance_points": args.tolerance,
        "methods": rows,
    }
    p = save(out, args.json, f"precision-{device.type}")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
