"""Train one model without Ray.

    python -m trainables.train --method sprout --dataset digits
    python -m trainables.train --method pgd_at --model wrn --dataset cifar10 --epochs 100 \\
        --set model_args.width=10 --set method_args.steps=7 --output-dir runs/pgd

Trains, evaluates clean and PGD-20 accuracy on the test split (L-inf, the data set's eps:
0.1 on digits, 8/255 on CIFAR), writes DIR/metrics.json and DIR/checkpoint.pt, and prints a
one-line summary. With ``--set data.val_size=0.2`` (a fraction, or a count) a stratified
validation split is held out of the training data: the per-epoch monitor reads it, and the
screening protocol runs on it (``val`` in metrics.json) beside the test split's evaluation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .checkpoint import CHECKPOINT_FILE, METRICS_FILE
from .cli import Parser, run_main, writable_dir
from .files import write_json
from .registry import declared
from .schema import parse_override, set_nested, to_dict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(
        prog="python -m trainables.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--method", default="sprout", help=f"one of: {', '.join(declared('methods'))}")
    p.add_argument("--model", default=None, help=f"one of: {', '.join(declared('models'))} (default: the data set's)")
    p.add_argument("--dataset", default="digits", help=f"one of: {', '.join(declared('datasets'))}")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--init-checkpoint", default=None, help="start from these weights")
    p.add_argument("--protocol", default="basic", help="evaluation protocol after training (basic = clean + PGD-20)")
    p.add_argument("--output-dir", default="runs/train")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. method_args.alpha=0.05 or optim.lr=0.05",
    )
    return p.parse_args(argv)


def raw_config(args: argparse.Namespace) -> dict[str, Any]:
    raw: dict[str, Any] = {"method": args.method, "dataset": args.dataset, "seed": args.seed}
    for key, value in (
        ("model", args.model),
        ("epochs", args.epochs),
        ("batch_size", args.batch_size),
        ("init_checkpoint", args.init_checkpoint),
    ):
        if value is not None:
            raw[key] = value
    if args.data_root is not None:
        raw["data"] = {"root": args.data_root}
    for item in args.set:
        path, value = parse_override(item)
        set_nested(raw, path, value)
    return raw


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help answers before torch is imported
    from .checkpoint import save_checkpoint
    from .config import resolve
    from .evaluation import evaluate, format_table, get_protocol
    from .loop import build, fit

    cfg = resolve(raw_config(args))
    protocol = get_protocol(args.protocol)
    comp = build(cfg)  # loads data and any init checkpoint: bad input fails before anything is written
    out = writable_dir(args.output_dir, private=True)
    t0 = time.perf_counter()
    history = fit(comp, log=print)
    train_time = time.perf_counter() - t0
    ckpt_path = save_checkpoint(_final_state(comp), out / CHECKPOINT_FILE)
    screened = {}
    if comp.bundle.has_val:
        screened = {
            "val": evaluate(
                comp.net,
                comp.bundle.as_test_of_validation(),
                get_protocol("screen"),
                eps=cfg.eps,
                seed=cfg.seed,
                device=comp.device,
            )
        }
    results = evaluate(comp.net, comp.bundle, protocol, eps=cfg.eps, seed=cfg.seed, device=comp.device)
    write_json(
        out / METRICS_FILE,
        {"config": to_dict(cfg), "history": history, "train_time_s": train_time, "final": results, **screened},
    )
    print(format_table(results))
    print(
        f"{cfg.method} {cfg.model} {cfg.dataset}: clean {results['clean_acc']:.4f}  "
        f"pgd20 {results['pgd20_acc']:.4f} (eps {cfg.eps:.4g})  train {train_time:.1f}s  -> {Path(ckpt_path)}"
    )
    return 0


def _final_state(comp) -> dict[str, Any]:
    from .loop import checkpoint_state

    return checkpoint_state(comp, comp.cfg.epochs)


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
