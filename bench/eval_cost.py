"""Evaluation cost: PGD-k and AutoAttack throughput against the cost of k forward-backward passes.

    python bench/eval_cost.py                      # small CNN on digits-shaped inputs, CPU
    python bench/eval_cost.py --json bench/results/eval_cost-cpu.json

PGD-k should cost about k input-gradient passes (plus one forward for the final check);
the ratio column says how close it is. AutoAttack's cost depends on how many points survive
each of its attacks, so it is reported as images per second on a trained model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name, median, save, timed  # noqa: E402
from trainables.attacks import bn_mode, input_grad, pgd_linf  # noqa: E402


def trained_model(device):
    from trainables.loop import build, fit
    from trainables.config import resolve

    comp = build(resolve({"method": "natural", "epochs": 5, "monitor": {"every": 0}}), device=device)
    fit(comp)
    return comp.net.eval(), comp.bundle


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="10,20,100")
    ap.add_argument("--n", type=int, default=256, help="images per PGD measurement")
    ap.add_argument("--autoattack-n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    net, bundle = trained_model(device)
    x, y = bundle.test_tensors(args.n)
    x, y = x.to(device), y.to(device)
    eps = 0.1

    def fb():
        with bn_mode(net, "eval"), torch.enable_grad():
            input_grad(net, x, y)

    fb_s = median([timed(fb, device) for _ in range(args.repeats)])
    out = {"device": device_name(device), "model": "small_cnn (digits)", "n": args.n,
           "forward_backward_ms": round(1000 * fb_s, 3), "pgd": {}}
    print(f"small_cnn on digits, {args.n} images on {out['device']}; one input-gradient pass: {1000 * fb_s:.2f} ms")
    print(f"{'attack':<12}{'images/s':>10}{'x k passes':>12}")
    for k in (int(s) for s in args.steps.split(",")):
        t = median([timed(lambda: pgd_linf(net, x, y, eps=eps, steps=k, step_size=eps / 4), device)
                    for _ in range(args.repeats)])
        ratio = t / (k * fb_s)
        out["pgd"][f"pgd{k}"] = {"images_per_s": round(args.n / t, 1), "ratio_to_k_passes": round(ratio, 3)}
        print(f"{'PGD-' + str(k):<12}{args.n / t:>10.1f}{ratio:>11.2f}x")
    from trainables.eval_attacks import autoattack

    m = min(args.autoattack_n, len(y))
    t = timed(lambda: autoattack(net, x[:m].cpu(), y[:m].cpu(), eps=eps, seed=0, device=device, batch_size=256), device)
    out["autoattack"] = {"images_per_s": round(m / t, 2), "n": m, "equivalent_passes_per_image": round(t / (fb_s / args.n) / m, 1)}
    print(f"{'AutoAttack':<12}{m / t:>10.2f}   (~{out['autoattack']['equivalent_passes_per_image']:.0f} input-gradient passes per image)")
    p = save(out, args.json, f"eval_cost-{device.type}")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
