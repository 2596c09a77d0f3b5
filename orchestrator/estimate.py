"""What a study will cost, estimated before it runs from the project's own measurements.

An estimate, not a measurement. Every figure says which measurement it came from:

- one forward-backward pass of one image of the reference model on the target device: on a GPU
  from a GPU acceptance run (``bench/results/gpu_acceptance-*.json``: natural WRN-34-10 training
  images/s on CIFAR-shaped data), else an assumption (stated); on CPU from the step-cost
  benchmark (``bench/results/step_cost-*-cpu.json``: natural small CNN steps on 3x32x32);
- each method's step cost relative to natural, from the step-cost benchmark;
- AutoAttack's cost in forward-backward passes per image, from the evaluation-cost benchmark;
- a model's cost relative to the reference model: the ratio of their forward FLOPs on one image
  of the data set's shape, counted by ``torch.utils.flop_counter`` (no training, no data).

A trial costs its epochs of training, its screening on validation, and (when it is a finalist)
its certification on the test split; a study's wall time runs its trials ``concurrency`` at a
time (longest first) and spreads certification shards over every device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
ASSUMED_GPU_EPOCH_S = 60.0  # one natural WRN-34-10 CIFAR-10 epoch (50,000 images) on one A10G in bf16: ASSUMED
# split sizes and image shapes of the data sets (their loaders' facts), for counting images and FLOPs
DATA = {
    "digits": {"train": 1437, "test": 360, "shape": (1, 8), "classes": 10},
    "cifar10": {"train": 50_000, "test": 10_000, "shape": (3, 32), "classes": 10},
    "cifar100": {"train": 50_000, "test": 10_000, "shape": (3, 32), "classes": 100},
    "imagenet": {"train": 1_281_167, "test": 50_000, "shape": (3, 224), "classes": 1000},
}
GPU_REFERENCE = ("wrn", {"depth": 34, "width": 10}, "cifar10")  # what a GPU acceptance run trains
CPU_REFERENCE = ("small_cnn", {}, "cifar10")  # what the CPU step-cost benchmark steps


@dataclass
class Basis:
    """The measurements an estimate is built from, and where each came from."""

    device: str  # "GPU" or "CPU"
    pass_s: float  # seconds of one forward-backward pass of one image of the reference model
    pass_from: str
    reference: tuple[str, dict, str]  # (model, model_args, data set) the pass was measured on
    step_ratios: dict[str, float] = field(default_factory=dict)  # method -> step cost / natural's
    ratios_from: str = "none measured: every method costs a natural step"
    aa_passes: float = 3500.0  # AutoAttack's forward-backward passes per image
    aa_from: str = "none measured: 3,500 passes per image assumed"
    startup_s: float = 0.0  # a trial's start-up before it trains (Ray Train's processes, data)
    startup_from: str = "none measured: no start-up counted"

    def sources(self) -> dict[str, str]:
        return {
            "pass": self.pass_from,
            "step_ratios": self.ratios_from,
            "autoattack": self.aa_from,
            "trial_startup": self.startup_from,
        }


def _newest(pattern: str, results: Path) -> Path | None:
    found = sorted(results.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def load_basis(gpu: bool, results: Path = BENCH_RESULTS, acceptance: Path | None = None) -> Basis:
    """The measurements for a study whose workers use GPUs (``gpu``) or CPUs; ``acceptance``
    names the GPU acceptance run to use (default: the newest in ``results``)."""
    step = _newest("step_cost-*-cpu.json", results) if results.is_dir() else None
    if gpu:
        acc = acceptance or (_newest("gpu_acceptance-*.json", results) if results.is_dir() else None)
        if acc is not None:
            ips = json.loads(acc.read_text())["train"]["natural"]["images_per_s"]
            basis = Basis(
                "GPU", 1.0 / ips, f"measured: {acc.name} (natural WRN-34-10, {ips:.0f} images/s)", GPU_REFERENCE
            )
        else:
            basis = Basis(
                "GPU",
                ASSUMED_GPU_EPOCH_S / DATA["cifar10"]["train"],
                f"ASSUMED: a natural WRN-34-10 CIFAR-10 epoch in {ASSUMED_GPU_EPOCH_S:.0f} s on one A10G "
                "(no GPU acceptance run in bench/results/)",
                GPU_REFERENCE,
            )
    elif step is not None:
        data = json.loads(step.read_text())
        ms = data["methods"]["natural"]["ms_per_step"]
        basis = Basis(
            "CPU",
            ms / 1000.0 / data["batch_size"],
            f"measured: {step.name} ({data['device']}, natural small CNN, {ms:.0f} ms per step of {data['batch_size']})",
            CPU_REFERENCE,
        )
    else:
        basis = Basis("CPU", 1e-3, "ASSUMED: 1 ms per image (no step-cost benchmark in bench/results/)", CPU_REFERENCE)
    if step is not None:
        basis.step_ratios = {k: v["ratio_to_natural"] for k, v in json.loads(step.read_text())["methods"].items()}
        basis.ratios_from = f"measured: {step.name}"
    orch = results / "orchestration-cpu.json"
    if orch.is_file():
        data = json.loads(orch.read_text())
        # a trial through the sweep, from Tune creating it to its first step (older files: the trainer from a driver)
        key = "trial_startup_wall_s" if "trial_startup_wall_s" in data else "trial_startup_s"
        basis.startup_s = float(data[key])
        basis.startup_from = f"measured: {orch.name} {key} ({basis.startup_s:.0f} s per trial, CPU)"
    ev = results / "eval_cost-cpu.json"
    if ev.is_file():
        basis.aa_passes = float(json.loads(ev.read_text())["autoattack"]["equivalent_passes_per_image"])
        basis.aa_from = f"measured: {ev.name}"
    return basis


_FLOPS: dict[str, float] = {}


def forward_flops(model: str, model_args: dict, dataset: str) -> float:
    """Forward FLOPs of one image of ``dataset`` through ``model`` (counted once per shape)."""
    key = json.dumps([model, model_args, dataset], sort_keys=True, default=str)
    if key not in _FLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from trainables.models import create_model

        d = DATA[dataset]
        channels, size = d["shape"]
        net = create_model(model, model_args, num_classes=d["classes"], in_channels=channels, image_size=size).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, channels, size, size))
        _FLOPS[key] = float(counter.get_total_flops())
    return _FLOPS[key]


def method_key(cfg: dict) -> str:
    """The step-cost benchmark's name for a trial's method (SPROUT's released-code variant is its own)."""
    if cfg["method"] == "sprout" and (cfg.get("method_args") or {}).get("variant") == "reference":
        return "sprout_reference"
    return cfg["method"]


def attack_passes(protocol, n: int, aa_per_image: float) -> float:
    """Forward-backward passes of one evaluation of ``n`` images under ``protocol``."""
    total = float(n)  # the clean pass and the masking checks' gradients
    for name, b in protocol.attacks:
        m = n if getattr(b, "n", None) is None else min(n, b.n)
        if name == "fgsm":
            total += m
        elif name == "pgd":
            total += m * sum(s * r for s, r in b.runs)
        elif name == "cw_linf":
            total += m * b.steps
        elif name == "cw_l2":
            total += m * b.search_steps * b.iterations
        elif name == "transfer":
            total += m * b.steps
        elif name == "autoattack":
            total += m * aa_per_image
        elif name == "curve":
            points = len([e for e in b.multiples if e > 0])
            total += m * points * (aa_per_image if b.autoattack else b.pgd_steps)
        elif name == "large_eps":
            total += m * b.steps
        elif name == "targeted":
            total += m * b.steps * len(b.eps)
        else:  # invariance and any attack without gradient steps: a few forward passes
            total += m
    return total


@dataclass
class TrialCost:
    train_s: float  # its start-up and its epochs
    screen_s: float
    certify_s: float

    @property
    def total_s(self) -> float:
        return self.train_s + self.screen_s + self.certify_s


def trial_cost(
    cfg: dict, screen, certify, finalist: bool, basis: Basis, val_images: int, trains: bool = True
) -> TrialCost:
    """Device-seconds of one trial on the basis' device: training (none for an evaluation
    stage's checkpoint), screening, and certification when it is a finalist."""
    d = DATA[cfg["dataset"]]
    scale = forward_flops(cfg["model"], cfg.get("model_args") or {}, cfg["dataset"]) / forward_flops(*basis.reference)
    per_pass = basis.pass_s * scale
    ratio = basis.step_ratios.get(method_key(cfg), basis.step_ratios.get(cfg["method"], 1.0))
    train_images = d["train"] - val_images
    train_s = cfg["epochs"] * train_images * per_pass * ratio if trains else 0.0
    screen_s = (
        attack_passes(screen, min(val_images, screen.n or val_images), basis.aa_passes) * per_pass
        if val_images
        else 0.0
    )
    test = d["test"] if certify.n is None else min(certify.n, d["test"])
    certify_s = attack_passes(certify, test, basis.aa_passes) * per_pass if finalist else 0.0
    return TrialCost((basis.startup_s if trains else 0.0) + train_s, screen_s, certify_s)


def makespan(durations: list[float], concurrency: int) -> float:
    """Wall time of running ``durations`` ``concurrency`` at a time, longest first."""
    slots = [0.0] * max(1, concurrency)
    for t in sorted(durations, reverse=True):
        slots[slots.index(min(slots))] += t
    return max(slots) if durations else 0.0


def study_estimate(stages: list[dict[str, Any]], basis: Basis, concurrency: int, workers: int) -> dict[str, Any]:
    """The estimate of a study from its stages' trial costs (``stages``: name and ``costs``, a
    list of TrialCost): device-hours by phase, and wall time with ``concurrency`` trials at once
    of ``workers`` data-parallel workers each (stages run one after another)."""
    train = sum(c.train_s + c.screen_s for s in stages for c in s["costs"])
    cert = sum(c.certify_s for s in stages for c in s["costs"])
    wall = 0.0
    for s in stages:
        wall += makespan([(c.train_s + c.screen_s) / workers for c in s["costs"]], concurrency)
        wall += sum(c.certify_s for c in s["costs"]) / (max(1, concurrency) * workers)
    unit = f"{basis.device}-hours"
    return {
        "device": basis.device,
        f"training_and_screening_{basis.device.lower()}_hours": round(train / 3600, 3),
        f"certification_{basis.device.lower()}_hours": round(cert / 3600, 3),
        f"total_{basis.device.lower()}_hours": round((train + cert) / 3600, 3),
        "unit": unit,
        "wall_hours": round(wall / 3600, 3),
        "concurrency": concurrency,
        "workers_per_trial": workers,
        "sources": basis.sources(),
        "note": "an estimate from measured per-pass, per-step and per-image costs scaled by FLOPs; "
        "narrow or small models use a device less well, so their figures are lower bounds",
    }
