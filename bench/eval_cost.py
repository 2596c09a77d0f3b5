"""Evaluation cost: each protocol's seconds per model against the training it checks, PGD-k and
AutoAttack throughput against the cost of k forward-backward passes, and what PGD's early exit
saves.

    python bench/eval_cost.py                      # small CNN on digits, CPU, 1 thread (a sweep trial's)
    python bench/eval_cost.py --json bench/results/eval_cost-cpu.json
    python bench/eval_cost.py --protocols quick,standard-smoke --epochs 10

Per protocol and model (natural and SPROUT, trained here for --epochs as the main job trains):
evaluation seconds, the ratio to the training seconds and each attack's seconds. ``X-smoke``
is protocol X with --smoke-test's budgets (the width smoke study runs ``standard-smoke``).
PGD-k should cost about k input-gradient passes; the early-exit column is the time of PGD that
attacks every image to the end divided by the time of the evaluation's PGD (same result).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name, median, save, timed  # noqa: E402
from trainables.attacks import bn_mode, input_grad, pgd_linf, pgd_linf_best, pgd_linf_to_the_end  # noqa: E402


def trained_model(device, method: str = "natural", epochs: int = 5):
    """A digits model and its training seconds (the loop's own epoch times, monitor off)."""
    from trainables.config import resolve
    from trainables.loop import build, fit

    comp = build(resolve({"method": method, "epochs": epochs, "monitor": {"every": 0}}), device=device)
    fit(comp)
    return comp.net.eval(), comp.bundle, sum(h["epoch_time_s"] for h in comp.history)


def protocol_costs(names: list[str], methods: list[str], epochs: int, device) -> list[dict]:
    """Each protocol on each model: evaluation seconds, per attack, and the ratio to training."""
    from trainables.evaluation import evaluate, get_protocol, smoke_overrides

    rows = []
    print(f"\nprotocols on digits models trained {epochs} epochs ({torch.get_num_threads()} thread(s)):")
    print(f"{'model':<10}{'protocol':<17}{'train s':>9}{'eval s':>9}{'eval/train':>12}  slowest attacks (s)")
    for method in methods:
        net, bundle, train_s = trained_model(device, method, epochs)
        for name in names:
            base = name.removesuffix("-smoke")
            p = get_protocol(base)
            if name.endswith("-smoke"):
                p = get_protocol(base, smoke_overrides(p))
            r = evaluate(net, bundle, p, seed=0, device=device)
            secs = r["attack_seconds"]
            top = sorted(secs.items(), key=lambda kv: -kv[1])[:4]
            rows.append(
                {
                    "model": method,
                    "protocol": name,
                    "train_s": round(train_s, 2),
                    "eval_s": round(r["eval_time_s"], 2),
                    "ratio": round(r["eval_time_s"] / train_s, 2),
                    "attack_seconds": secs,
                    "robust_acc_min": r.get("robust_acc_min"),
                    "autoattack_acc": r.get("autoattack_acc"),
                }
            )
            print(
                f"{method:<10}{name:<17}{train_s:>9.1f}{r['eval_time_s']:>9.1f}{r['eval_time_s'] / train_s:>11.1f}x  "
                + ", ".join(f"{k} {v:.1f}" for k, v in top)
            )
    return rows


def early_exit(methods: list[str], epochs: int, n: int, device) -> dict:
    """PGD-100 x 3 to the end against the evaluation's PGD, on each model (same images, same seed)."""
    out = {}
    print(f"\nPGD-100x3 on {n} images: attacking every image to the end / the evaluation's early exit")
    for method in methods:
        net, bundle, _ = trained_model(device, method, epochs)
        x, y = bundle.test_tensors(n)
        x, y = x.to(device), y.to(device)
        kw = dict(eps=0.1, steps=100, step_size=0.025, restarts=3)
        t_end = timed(lambda: pgd_linf_to_the_end(net, x, y, generator=torch.Generator().manual_seed(0), **kw), device)
        t_fast = timed(lambda: pgd_linf_best(net, x, y, generator=torch.Generator().manual_seed(0), **kw), device)
        out[method] = {
            "to_the_end_s": round(t_end, 2),
            "early_exit_s": round(t_fast, 2),
            "speedup": round(t_end / t_fast, 2),
        }
        print(f"  {method:<10}{t_end:>8.1f}s / {t_fast:>6.1f}s = {t_end / t_fast:.2f}x")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="10,20,100")
    ap.add_argument("--n", type=int, default=256, help="images per PGD measurement")
    ap.add_argument("--autoattack-n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a sweep trial has 1 per CPU it holds)")
    ap.add_argument("--protocols", default="quick,standard-smoke", help="comma-separated; '' skips this part")
    ap.add_argument("--methods", default="natural,sprout")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the models the protocols check")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net, bundle, _ = trained_model(device)
    x, y = bundle.test_tensors(args.n)
    x, y = x.to(device), y.to(device)
    eps = 0.1

    def fb():
        with bn_mode(net, "eval"), torch.enable_grad():
            input_grad(net, x, y)

    fb_s = median([timed(fb, device) for _ in range(args.repeats)])
    out = {
        "device": device_name(device),
        "model": "small_cnn (digits)",
        "n": args.n,
        "forward_backward_ms": round(1000 * fb_s, 3),
        "pgd": {},
    }
    print(f"small_cnn on digits, {args.n} images on {out['device']}; one input-gradient pass: {1000 * fb_s:.2f} ms")
    print(f"{'attack':<12}{'images/s':>10}{'x k passes':>12}")
    for k in (int(s) for s in args.steps.split(",")):
        t = median(
            [
                timed(lambda: pgd_linf(net, x, y, eps=eps, steps=k, step_size=eps / 4), device)
                for _ in range(args.repeats)
            ]
        )
        ratio = t / (k * fb_s)
        out["pgd"][f"pgd{k}"] = {"images_per_s": round(args.n / t, 1), "ratio_to_k_passes": round(ratio, 3)}
        print(f"{'PGD-' + str(k):<12}{args.n / t:>10.1f}{ratio:>11.2f}x")
    from trainables.evaluation.attacks.autoattack import autoattack

    m = min(args.autoattack_n, len(y))
    t = timed(lambda: autoattack(net, x[:m].cpu(), y[:m].cpu(), eps=eps, seed=0, device=device, batch_size=256), device)
    out["autoattack"] = {
        "images_per_s": round(m / t, 2),
        "n": m,
        "equivalent_passes_per_image": round(t / (fb_s / args.n) / m, 1),
    }
    print(
        f"{'AutoAttack':<12}{m / t:>10.2f}   (~{out['autoattack']['equivalent_passes_per_image']:.0f} input-gradient passes per image)"
    )
    methods = [m for m in args.methods.split(",") if m]
    out["early_exit"] = early_exit(methods, args.epochs, args.n, device)
    if args.protocols:
        out["protocols"] = protocol_costs([p for p in args.protocols.split(",") if p], methods, args.epochs, device)
    p = save(out, args.json, f"eval_cost-{device.type}")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
