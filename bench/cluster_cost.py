"""GPU-hours and cost of a study on a cluster, estimated from the benchmarks.

    python bench/cluster_cost.py --study width
    python bench/cluster_cost.py --study width --acceptance bench/results/gpu_acceptance-nvidia-a10g.json

An estimate, not a measurement, built from three figures:
- the seconds of one natural WRN-34-10 epoch of CIFAR-10 on the target GPU: from a GPU
  acceptance run (``--acceptance``: 50,000 / its natural images/s), else ``--natural-epoch-s``
  (default: an assumption, stated in the output);
- each method's step cost relative to natural, measured by ``bench/step_cost.py``
  (``bench/results/step_cost-*.json``);
- AutoAttack's cost in forward-backward passes per image, measured by ``bench/eval_cost.py``.
Width scales the cost by (width / 10)^2 (a WRN's FLOPs); narrow networks use a GPU less well,
so their figures are lower bounds. Evaluation counts every PGD step and restart of the
study's protocol on its images, and AutoAttack on its images and curve points.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"
ASSUMED_NATURAL_EPOCH_S = 60.0  # WRN-34-10, CIFAR-10, bf16, one A10G: an assumption until measured
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def step_ratios(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {k: v["ratio_to_natural"] for k, v in data["methods"].items()}


def aa_passes(path: Path) -> float:
    return float(json.loads(path.read_text())["autoattack"]["equivalent_passes_per_image"])


def trials(study_name: str) -> list[tuple[dict, object]]:
    """(resolved training config as a dict, the stage's protocol) for every trial of a study
    (grid studies expanded; Optuna studies as num_samples copies of their base)."""
    from orchestrator.study.load import load_raw, parse, plan
    from trainables.config import resolve
    from trainables.evaluation import get_protocol
    from trainables.schema import deep_merge, set_nested, to_dict

    raw, source = load_raw(name=study_name)
    p = plan(parse(raw, source), source)
    out = []
    for stage in p.stages:
        proto = get_protocol(stage.evaluation.protocol, stage.evaluation.overrides)
        specs = stage.search.param_specs(stage.name)
        base = {k: v for k, v in stage.base.items() if k != "init_checkpoint"}
        if stage.search.algorithm == "grid":
            keys = list(specs)
            combos = list(itertools.product(*(specs[k].values for k in keys))) or [()]
            cases = list(stage.search.cases) or [{}]
            for combo, case in itertools.product(combos, cases):
                cfg = deep_merge(base, {k: v for k, v in case.items() if k != "name"})
                for k, v in zip(keys, combo):
                    set_nested(cfg, k.split("."), v)
                out += [(to_dict(resolve(cfg)), proto)] * stage.search.num_samples
        else:
            out += [(to_dict(resolve(base)), proto)] * stage.search.num_samples
    return out


def eval_passes(proto, aa_per_image: float) -> float:
    """Forward-backward passes of one evaluation (CIFAR-10 test split sizes): PGD runs,
    AutoAttack and the eps curve, which dominate every protocol."""
    n = proto.n or CIFAR_TEST
    pgd, aa, curve = proto.budget("pgd"), proto.budget("autoattack"), proto.budget("curve")
    passes = n * sum(s * r for s, r in pgd.runs) if pgd else 0.0
    if aa:
        passes += (n if aa.n is None else aa.n) * aa_per_image
    if curve:
        points = len([e for e in curve.multiples if e > 0])
        passes += (curve.n or n) * points * (aa_per_image if curve.autoattack and aa else curve.pgd_steps)
    return passes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="width")
    ap.add_argument(
        "--natural-epoch-s",
        type=float,
        default=None,
        help=f"seconds of a natural WRN-34-10 CIFAR-10 epoch on the GPU (default {ASSUMED_NATURAL_EPOCH_S}, assumed)",
    )
    ap.add_argument("--acceptance", default=None, help="a bench/gpu_acceptance.py JSON: its natural images/s")
    ap.add_argument("--step-cost", default=str(RESULTS / "step_cost-small_cnn-cpu.json"))
    ap.add_argument("--eval-cost", default=str(RESULTS / "eval_cost-cpu.json"))
    ap.add_argument("--price-per-gpu-hour", type=float, default=1.212, help="USD (g5.2xlarge on-demand, one A10G)")
    args = ap.parse_args(argv)
    if args.acceptance:
        ips = json.loads(Path(args.acceptance).read_text())["train"]["natural"]["images_per_s"]
        epoch_s, basis = CIFAR_TRAIN / ips, f"measured: {args.acceptance}"
    elif args.natural_epoch_s:
        epoch_s, basis = args.natural_epoch_s, "given (--natural-epoch-s)"
    else:
        epoch_s, basis = ASSUMED_NATURAL_EPOCH_S, "ASSUMED (no GPU acceptance run yet)"
    ratios = step_ratios(Path(args.step_cost))
    aa = aa_passes(Path(args.eval_cost))
    pass_s = epoch_s / CIFAR_TRAIN  # one forward-backward pass of one WRN-34-10 image
    rows, total = [], 0.0
    for cfg, proto in trials(args.study):
        width = float(cfg.get("model_args", {}).get("width", 10)) if cfg["model"] == "wrn" else 10.0
        scale = (width / 10.0) ** 2
        train_s = cfg["epochs"] * epoch_s * ratios.get(cfg["method"], 1.0) * scale
        eval_s = eval_passes(proto, aa) * pass_s * scale
        rows.append((cfg["method"], width, cfg["epochs"], train_s / 3600, eval_s / 3600))
        total += train_s + eval_s
    print(
        f"study {args.study}: {len(rows)} trial(s); natural WRN-34-10 epoch {epoch_s:.0f} s ({basis}); "
        f"step ratios from {Path(args.step_cost).name}; AutoAttack {aa:.0f} passes/image from {Path(args.eval_cost).name}"
    )
    print(f"{'method':<20}{'width':>6}{'epochs':>7}{'train GPU-h':>13}{'eval GPU-h':>12}")
    for m, w, e, t, v in rows:
        print(f"{m:<20}{w:>6g}{e:>7}{t:>13.1f}{v:>12.1f}")
    hours = total / 3600
    print(
        f"total {hours:.0f} GPU-hours, about ${hours * args.price_per_gpu_hour:,.0f} at ${args.price_per_gpu_hour}/GPU-hour "
        f"(estimate; narrow widths are lower bounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
