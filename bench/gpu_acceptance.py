"""GPU acceptance: does the fast path deliver on this GPU? One command, one JSON file.

    python bench/gpu_acceptance.py                  # on a CUDA machine: bench/results/gpu_acceptance-<gpu>.json
    python bench/gpu_acceptance.py --sections step --methods natural,sprout --no-compile
    python bench/gpu_acceptance.py --tiny --allow-cpu --json /tmp/acc.json   # the code path on CPU (CI)

Sections (all by default):
- ``step``: per-step cost of every method on WRN-34-10, batch 128 of 3x32x32, in fp32 and bf16
  autocast, channels_last, with and without ``torch.compile``; methods interleaved per round,
  median over rounds, each ratio to natural in the same configuration. Target: SPROUT at most
  1.05x natural.
- ``train``: training images/s of natural, sprout and pgd_at through the real loop
  (``trainables.loop``) on CIFAR-shaped data held on the GPU with on-GPU crop and flip. Goal:
  a 200-epoch WRN-34-10 SPROUT run in under 20 minutes, i.e. about 10,000 images/s
  (50,000 x 200 / 1,200 s = 8,333, rounded up for evaluation and start-up).
- ``eval``: images/s of PGD-20 and of AutoAttack (standard) on the model the train section
  trained (the data is learnable, so most points are correct and AutoAttack attacks them).
- ``ddp``: with two or more GPUs, images/s of 2 DDP workers (NCCL) against 1.
Peak GPU memory is recorded for every configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, device_name, median, save, sync, timed  # noqa: E402

ALL_METHODS = "natural,sprout,sprout_reference,pgd_at,trades,free_at,fast_at,backward_smoothing"
SPROUT_TARGET = 1.05  # SPROUT's step at most this many natural steps
GOAL_IMAGES_PER_S = 10_000  # a 200-epoch WRN-34-10 SPROUT run on CIFAR-10 in under 20 minutes
CIFAR_TRAIN = 50_000


def model_spec(tiny: bool) -> tuple[str, dict[str, Any]]:
    return ("small_cnn", {"width": 8}) if tiny else ("wrn", {"depth": 34, "width": 10})


def learnable_cifar(n_train: int, n_test: int, *, classes: int = 10, seed: int = 0):
    """CIFAR-shaped data a model learns within an epoch: a fixed pattern per class plus noise,
    in [0, 1]. Throughput does not depend on the pixels; evaluation cost does (AutoAttack only
    attacks points the model gets right), so the data must be learnable."""
    from trainables.data import DataBundle

    g = torch.Generator().manual_seed(seed)
    # low-frequency patterns (4x4 upsampled), so that random crops keep them recognisable
    coarse = torch.rand(classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = (0.5 + 0.8 * (patterns[y] - 0.5) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
        return x, y

    (xt, yt), (xv, yv) = split(n_train), split(n_test)
    return DataBundle("cifar10", classes, 3, 32, xt, yt, xv, yv, augment="crop_flip")


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def make_method(name: str, tiny: bool, device: torch.device, *, amp: bool, compile_: bool):
    from bench.step_cost import make_method as build

    model, margs = model_spec(tiny)
    return build(
        name,
        model,
        margs,
        (3, 32, 32),
        10,
        device,
        torch.bfloat16 if amp else None,
        channels_last=device.type == "cuda",
        compile_=compile_,
    )


def section_step(args, device) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    names = args.methods.split(",")
    out: dict[str, Any] = {}
    for compile_ in [False] if args.no_compile else [False, True]:
        for amp in (False, True):
            key = f"{'bf16' if amp else 'fp32'}{'+compile' if compile_ else ''}"
            methods, peaks = {}, {}
            for n in names:
                peak_reset(device)
                methods[n] = make_method(n, args.tiny, device, amp=amp, compile_=compile_)
                for _ in range(args.warmup + (3 if compile_ else 0)):
                    methods[n].train_step(x, y)
                sync(device)
                peaks[n] = peak_gib(device)
            times: dict[str, list[float]] = {n: [] for n in names}
            for _ in range(args.repeats):
                for n, m in methods.items():
                    times[n].append(timed(lambda: [m.train_step(x, y) for _ in range(args.steps)], device) / args.steps)
            base = median(times["natural"]) if "natural" in times else None
            rows = {}
            for n in names:
                s = median(times[n])
                rows[n] = {
                    "ms_per_step": round(1000 * s, 3),
                    "images_per_s": round(args.batch_size / s, 1),
                    "ratio_to_natural": round(s / base, 3) if base else None,
                    "peak_gib": peaks[n],
                }
            out[key] = rows
            del methods
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print(
                f"[step] {key}: "
                + "  ".join(
                    f"{n} {r['ms_per_step']:.1f} ms ({r['ratio_to_natural'] or 0:.2f}x)" for n, r in rows.items()
                ),
                flush=True,
            )
    return out


def _train_one(method: str, args, device, bundle, *, amp: bool, compile_: bool):
    from trainables.config import resolve
    from trainables.loop import build, fit

    model, margs = model_spec(args.tiny)
    cfg = resolve(
        {
            "method": method,
            "dataset": "cifar10",
            "model": model,
            "model_args": margs,
            "epochs": args.train_epochs,
            "batch_size": args.batch_size,
            "monitor": {"every": 0},
            "fast": {"amp": "bf16" if amp else "off", "channels_last": "auto", "compile": compile_},
        }
    )
    peak_reset(device)
    comp = build(cfg, device=device, bundle=bundle)
    hist = fit(comp)
    steady = hist[1:] or hist  # the first epoch carries allocation and compilation
    return comp, {
        "images_per_s": round(median([h["images_per_s"] for h in steady]), 1),
        "epoch_time_s": round(median([h["epoch_time_s"] for h in steady]), 3),
        "final_loss": round(float(hist[-1]["loss"]), 4),
        "peak_gib": peak_gib(device),
    }


def section_train(args, device, bundle) -> tuple[dict[str, Any], Any]:
    out: dict[str, Any] = {}
    natural = None
    for method in ("natural", "sprout", "pgd_at"):
        comp, r = _train_one(method, args, device, bundle, amp=device.type == "cuda", compile_=False)
        r["goal_images_per_s"] = GOAL_IMAGES_PER_S
        r["minutes_for_200_epochs_of_cifar10"] = round(CIFAR_TRAIN * 200 / r["images_per_s"] / 60, 1)
        out[method] = r
        if method == "natural":
            natural = comp
        print(
            f"[train] {method}: {r['images_per_s']:.0f} images/s (goal {GOAL_IMAGES_PER_S}); 200 CIFAR-10 epochs "
            f"in {r['minutes_for_200_epochs_of_cifar10']} min; peak {r['peak_gib']} GiB",
            flush=True,
        )
    return out, natural


def section_eval(args, device, comp) -> dict[str, Any]:
    from trainables.attacks import pgd_linf
    from trainables.evaluation.attacks.autoattack import autoattack
    from trainables.metrics import batched

    net = comp.net.eval()
    x, y = comp.bundle.test_tensors(args.eval_n)
    with torch.no_grad():
        clean = (net(x.to(device)).argmax(1).cpu() == y).float().mean().item()
    eps = 8 / 255
    pgd = lambda xb, yb: pgd_linf(net, xb, yb, eps=eps, steps=20, step_size=eps / 4)  # noqa: E731
    peak_reset(device)
    t_pgd = timed(lambda: batched(pgd, x, y, batch_size=args.eval_batch, device=device), device)
    pgd_peak = peak_gib(device)
    xa, ya = x[: args.autoattack_n], y[: args.autoattack_n]
    peak_reset(device)
    t_aa = timed(lambda: autoattack(net, xa, ya, eps=eps, seed=0, device=device, batch_size=args.eval_batch), device)
    out = {
        "clean_acc": round(clean, 4),
        "pgd20": {"images": len(x), "images_per_s": round(len(x) / t_pgd, 1), "peak_gib": pgd_peak},
        "autoattack": {"images": len(xa), "images_per_s": round(len(xa) / t_aa, 2), "peak_gib": peak_gib(device)},
    }
    print(
        f"[eval] clean {clean:.3f}; PGD-20 {out['pgd20']['images_per_s']:.0f} images/s; "
        f"AutoAttack {out['autoattack']['images_per_s']:.2f} images/s",
        flush=True,
    )
    return out


def _ddp_worker(rank: int, world: int, port: int, args_dict: dict, bundle, result):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    try:
        args = argparse.Namespace(**args_dict)
        _, r = _train_one("natural", args, torch.device("cuda", rank), bundle, amp=True, compile_=False)
        if rank == 0:
            result.put(r)
    finally:
        dist.destroy_process_group()


def section_ddp(args, bundle) -> dict[str, Any]:
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): DDP needs two"}
    out = {}
    for world in (1, 2):
        ctx = mp.get_context("spawn")
        q = ctx.SimpleQueue()
        mp.spawn(_ddp_worker, args=(world, 29500 + world, vars(args), bundle, q), nprocs=world, join=True)
        r = q.get()
        # rank 0's images/s is its own shard's rate: the group's rate is world times that
        out[f"{world}_workers_images_per_s"] = round(r["images_per_s"] * world, 1)
    out["speedup_2_over_1"] = round(out["2_workers_images_per_s"] / out["1_workers_images_per_s"], 3)
    print(
        f"[ddp] 1 worker {out['1_workers_images_per_s']:.0f}, 2 workers {out['2_workers_images_per_s']:.0f} "
        f"images/s ({out['speedup_2_over_1']:.2f}x)",
        flush=True,
    )
    return out


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {}
    for key, rows in result.get("step", {}).items():
        if "sprout" in rows and rows["sprout"]["ratio_to_natural"] is not None:
            r = rows["sprout"]["ratio_to_natural"]
            v[f"sprout_step_{key}"] = {"ratio": r, "target": SPROUT_TARGET, "met": r <= SPROUT_TARGET}
    if "sprout" in result.get("train", {}):
        ips = result["train"]["sprout"]["images_per_s"]
        v["sprout_images_per_s"] = {"value": ips, "goal": GOAL_IMAGES_PER_S, "met": ips >= GOAL_IMAGES_PER_S}
    return v


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="step,train,eval,ddp")
    ap.add_argument("--methods", default=ALL_METHODS, help="for the step section")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (step section)")
    ap.add_argument("--steps", type=int, default=10, help="steps timed per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile configurations")
    ap.add_argument("--train-images", type=int, default=20_000, help="CIFAR-shaped training images per epoch")
    ap.add_argument("--train-epochs", type=int, default=3)
    ap.add_argument("--eval-n", type=int, default=2000, help="images for PGD-20")
    ap.add_argument("--autoattack-n", type=int, default=500)
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--tiny", action="store_true", help="a small CNN and small counts: the code path, not the figures")
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (with --tiny, for CI)")
    ap.add_argument("--json", default=None, help="default: bench/results/gpu_acceptance-<gpu>.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(
            "error: no CUDA device: this benchmark measures a GPU (use --tiny --allow-cpu to check the code path)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        args.train_images, args.eval_n, args.autoattack_n = (
            min(args.train_images, 512),
            min(args.eval_n, 64),
            min(args.autoattack_n, 8),
        )
        args.batch_size, args.eval_batch = min(args.batch_size, 32), min(args.eval_batch, 64)
    sections = set(args.sections.split(","))
    bundle = learnable_cifar(args.train_images, max(args.eval_n, args.autoattack_n))
    result: dict[str, Any] = {
        "device": device_name(device),
        "model": dict(zip(("name", "args"), model_spec(args.tiny))),
        "batch_size": args.batch_size,
        "tiny": args.tiny,
    }
    if "step" in sections:
        result["step"] = section_step(args, device)
    natural = None
    if "train" in sections or "eval" in sections:
        result["train"], natural = section_train(args, device, bundle)
    if "eval" in sections:
        result["eval"] = section_eval(args, device, natural)
    if "ddp" in sections and device.type == "cuda":
        result["ddp"] = section_ddp(args, bundle)
    result["verdict"] = verdict(result)
    path = args.json or str(RESULTS / f"gpu_acceptance-{slug(result['device'])}.json")
    p = save(result, path, "gpu_acceptance")
    print(json.dumps(result["verdict"], indent=1))
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
