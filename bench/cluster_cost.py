"""GPU-hours and cost of a study on a cluster: the study's dry-run estimate, priced.

    python bench/cluster_cost.py --study width
    python bench/cluster_cost.py --study width --acceptance bench/results/gpu_acceptance-nvidia-a10g.json

The estimate is ``orchestrator/sweep.py --dry-run``'s (``orchestrator/estimate.py``: measured
per-pass, per-step, AutoAttack and start-up costs scaled by each model's FLOPs), here with the
cluster's price per GPU-hour and, optionally, a named GPU acceptance run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from orchestrator import estimate
    from orchestrator.dryrun import dry_run, render
    from orchestrator.study import load_raw, parse, plan

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="width")
    ap.add_argument("--acceptance", default=None, help="a bench/gpu_acceptance.py JSON: its natural images/s")
    ap.add_argument("--cluster-config", default=str(Path(__file__).resolve().parents[1] / "cluster" / "gpu.yaml"))
    ap.add_argument("--price-per-gpu-hour", type=float, default=1.212, help="USD (g5.2xlarge on-demand, one A10G)")
    args = ap.parse_args(argv)
    from orchestrator import cluster

    raw, source = load_raw(name=args.study)
    p = plan(parse(raw, source), source)
    basis = estimate.load_basis(
        p.resources.gpus_per_worker > 0, acceptance=Path(args.acceptance) if args.acceptance else None
    )
    report = dry_run(p, cluster.find_cluster_config(args.cluster_config), basis)
    print(render(report))
    e = report["estimate"]
    hours = e[f"total_{e['device'].lower()}_hours"]
    print(
        f"\nabout ${hours * args.price_per_gpu_hour:,.0f} at ${args.price_per_gpu_hour}/{e['device']}-hour (an estimate)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
