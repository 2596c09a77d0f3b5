"""Run a study: Ray Tune + Optuna over Ray Train trials, the finalists certified on the test
split across the cluster, everything tracked in MLflow.

    python orchestrator/sweep.py                          # the sensitivity study on digits, locally
    python orchestrator/sweep.py --study width --smoke-test
    python orchestrator/sweep.py --config my_study.yaml --num-workers 2
    python orchestrator/sweep.py --study width --resume   # continue an interrupted study
    python orchestrator/sweep.py --certify trades_wrn:model.pt --model wrn --dataset cifar10
    ray submit cluster/gpu.yaml orchestrator/sweep.py -- --study width

This file runs as a plain script (``ray submit`` copies it alone to the head node): it
imports the installed package and finds study files through it. Every input is validated
before Ray starts; bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse

from orchestrator.cluster import BOOTSTRAP_CONFIG  # cheap: no torch, no Ray
from orchestrator.study.load import DEFAULT_STUDY  # cheap: no torch, no Ray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from trainables.cli import Parser  # cheap: no torch, no Ray

    p = Parser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--study", default=None, help=f"a study under search_spaces/ (default: {DEFAULT_STUDY})")
    g.add_argument("--config", default=None, help="your own study file")
    g.add_argument(
        "--certify",
        default=None,
        metavar="FILE",
        help="certify one checkpoint (ours, or published weights as FORMAT:FILE with FORMAT torchvision, "
        "trades_wrn or robustbench) in shards across the cluster; nothing is trained",
    )
    p.add_argument("--list", action="store_true", help="list every study with a one-line description")
    p.add_argument("--model", default=None, help="with --certify FORMAT:FILE: the architecture (wrn, resnet152, ...)")
    p.add_argument("--dataset", default=None, help="with --certify FORMAT:FILE: its data set (cifar10, imagenet, ...)")
    p.add_argument("--protocol", default=None, help="with --certify: the evaluation protocol (default: standard)")
    p.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="FORMAT",
        help="write each certified finalist's claim in this format too (certify.export): robustbench",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the study will run (every trial's config, the protocols, the certification plan) and "
        "an estimate of its cost, then exit; starts no Ray and writes nothing",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: one JSON object instead of the table")
    p.add_argument("--smoke-test", action="store_true", help="seconds per trial on digits, every part of the path kept")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study from its storage path")
    p.add_argument("--output-dir", default=None, help="default: runs/STUDY (runs/STUDY-smoke with --smoke-test)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: sqlite under --output-dir)")
    p.add_argument(
        "--tracking-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for an MLflow server that refuses connections (still starting) "
        "before refusing --tracking-uri (default 60)",
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help="Ray storage for checkpoints and certification shards "
        "(default: OUTPUT_DIR/ray; shared storage on multi-node clusters)",
    )
    p.add_argument(
        "--optuna-storage",
        default=None,
        metavar="URL",
        help="the Optuna studies' database (SQLAlchemy URL: sqlite:///..., postgresql://...; default: "
        "OUTPUT_DIR/optuna.db); optuna-dashboard opens it, --resume continues its studies",
    )
    _overrides(p)
    _cluster(p.add_argument_group("cluster"))
    return p.parse_args(argv)


def _overrides(p: argparse.ArgumentParser) -> None:
    """What the command line changes in the study file."""
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (DDP ranks) per trial")
    p.add_argument("--gpus-per-worker", type=float, default=None)
    p.add_argument("--max-concurrent-trials", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=None, help="Optuna trials (or grid repeats) per stage")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="SEED",
        help="repeat every point of every stage once per seed (search.seeds); tables give mean and sd, a search chooses on the mean",
    )
    p.add_argument(
        "--published",
        action="append",
        default=[],
        metavar="TARGET=FORMAT:FILE",
        help="published weights instead of what a stage trains: TARGET a stage (imagenet: natural=torchvision:"
        "resnet152.pth) or STAGE/CASE (compare: main-wrn/trades=trades_wrn:model-wideres-epoch76.pt)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training-config key in every stage, e.g. data.root=/mnt/imagenet",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show the workers' logs and Ray's, Tune's and Optuna's messages"
    )
    p.add_argument(
        "--skip-data-check", action="store_true", help="do not check data roots on this node (data only on the workers)"
    )


def _cluster(c) -> None:
    """Where the study runs: which Ray, what the cluster can grow to, its storage."""
    c.add_argument(
        "--address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS; on a `ray up` head node, its cluster; "
        "otherwise a private local Ray)",
    )
    c.add_argument(
        "--cluster-config",
        default=None,
        help="the cluster launcher YAML, to know what the cluster can grow to "
        f"(default: {BOOTSTRAP_CONFIG} when present, as on a `ray up` head node)",
    )
    c.add_argument(
        "--resource-timeout",
        type=float,
        default=900.0,
        metavar="SECONDS",
        help="how long to wait for the cluster to provide the first trial's resources (default 900)",
    )
    c.add_argument(
        "--shared-storage",
        action="store_true",
        help="declare --storage-path a file system every node shares (an NFS mount this sweep does not recognise)",
    )


def list_studies() -> int:
    from orchestrator.study.load import list_studies as studies

    found = studies()
    w = max(len(k) for k in found)
    for name, desc in found.items():
        print(f"{name:<{w}}  {desc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help answers before anything heavy is imported
    if args.list:
        return list_studies()
    if args.json and not args.dry_run:
        from trainables.errors import ConfigError

        raise ConfigError("--json: only with --dry-run")
    if args.dry_run:
        return dry_run(args)
    import os

    if not args.verbose:  # MLflow announces every table it creates (read when MLflow is imported)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from orchestrator.launch import prepare
    from orchestrator.run import run

    return run(prepare(args))  # everything is checked before Ray starts; nothing is written on bad input


def dry_run(args: argparse.Namespace) -> int:
    """The plan and its estimate, after the same checks a real run makes of the study file."""
    import json

    from orchestrator.dryrun import dry_run as plan_of
    from orchestrator.dryrun import render
    from orchestrator.launch import check_plan, cluster_shape

    plan = check_plan(args)
    report = plan_of(plan, cluster_shape(args))
    print(json.dumps(report, indent=1, default=str) if args.json else render(report))
    return 0


def cli() -> None:
    from trainables.cli import run_main

    run_main(lambda: main())


if __name__ == "__main__":
    cli()
