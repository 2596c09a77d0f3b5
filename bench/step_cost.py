"""Per-step cost of every training method on the same model and batch.

    python bench/step_cost.py                       # small CNN, CIFAR-shaped batch of 128, CPU
    python bench/step_cost.py --model wrn --model-args '{"depth": 34, "width": 10}' --device cuda
    python bench/step_cost.py --json bench/results/step_cost-cpu.json

Runs of the methods are interleaved (round r times every method once, r = 1..repeats), so
machine noise hits all methods alike; the figure per method is the median over rounds, and
every ratio is to natural training measured in the same run. The SPROUT line is the paper
variant (one backward pass); ``sprout_reference`` is the released code's step (3 theta steps
and a separate beta pass).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import device_name, median, save, timed  # noqa: E402
from trainables.methods import METHODS  # noqa: E402
from trainables.methods.sprout import SproutConfig  # noqa: E402
from trainables.models import create_model  # noqa: E402

# forward-backward passes per step, for the "at or below (k+1)" check
FB_COUNT = {
    "natural": 1,
    "sprout": 1,
    "sprout_reference": 4,
    "pgd_at": 11,
    "trades": 12,
    "free_at": 8,
    "fast_at": 2,
    "backward_smoothing": 4,
}


def make_method(
    name: str,
    model: str,
    margs: dict,
    shape,
    classes: int,
    device,
    amp,
    *,
    channels_last: bool | None = None,
    compile_: bool = False,
):
    """A method ready to step on a fresh model. channels_last: default on CUDA with amp;
    compile_: torch.compile the trained model (attacks keep the plain one, as in the loop)."""
    torch.manual_seed(0)
    net = create_model(model, margs, num_classes=classes, in_channels=shape[0], image_size=shape[1]).to(device)
    if channels_last is None:
        channels_last = amp is not None and device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    key = "sprout" if name.startswith("sprout") else name
    cls = METHODS.get(key)
    cfg = SproutConfig(variant="reference").resolved() if name == "sprout_reference" else cls.Config()
    if hasattr(cfg, "resolved"):
        cfg = cfg.resolved()
    m = cls(
        torch.compile(net) if compile_ else net,
        opt,
        cfg,
        num_classes=classes,
        eps=8 / 255,
        device=device,
        amp_dtype=amp,
    )
    m.net = net
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--model-args", default="{}", help="JSON")
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--methods", default="natural,sprout,sprout_reference,pgd_at,trades,free_at,fast_at,backward_smoothing"
    )
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=5, help="steps timed per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    shape = tuple(int(s) for s in args.shape.split(","))
    names = args.methods.split(",")
    margs = json.loads(args.model_args)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, *shape, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch_size,), generator=g).to(device)
    methods = {n: make_method(n, args.model, margs, shape, args.classes, device, amp) for n in names}
    for m in methods.values():
        for _ in range(args.warmup):
            m.train_step(x, y)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for n, m in methods.items():
            times[n].append(timed(lambda: [m.train_step(x, y) for _ in range(args.steps)], device) / args.steps)
    base = median(times["natural"]) if "natural" in times else None
    out = {
        "device": device_name(device),
        "model": args.model,
        "model_args": margs,
        "batch_size": args.batch_size,
        "input_shape": list(shape),
        "amp": args.amp,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
        "methods": {},
    }
    print(
        f"{args.model} {margs or ''} batch {args.batch_size} x {shape} on {out['device']}  "
        f"(median of {args.repeats} interleaved rounds of {args.steps} steps)"
    )
    print(f"{'method':<20}{'ms/step':>10}{'x natural':>11}{'fwd-bwd':>9}")
    for n in names:
        ms = 1000 * median(times[n])
        ratio = median(times[n]) / base if base else None
        out["methods"][n] = {
            "ms_per_step": round(ms, 3),
            "ratio_to_natural": round(ratio, 3) if ratio else None,
            "forward_backward_passes": FB_COUNT.get(n),
        }
        print(f"{n:<20}{ms:>10.2f}{ratio:>10.2f}x{FB_COUNT.get(n, '-'):>9}")
    p = save(out, args.json, f"step_cost-{args.model}-{device.type}")
    if p:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
