"""Evaluate one checkpoint from the command line.

    python -m trainables.evaluate --checkpoint runs/train/checkpoint.pt --protocol quick \\
        --output-dir runs/eval [--transfer-source runs/natural/checkpoint.pt] [--n 500]

writes DIR/eval.json (one flat dict of stable metric names, see docs/evaluation.md) and prints a
table. The evaluation itself is ``trainables.evaluation``.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import EVAL_FILE
    from .cli import Parser, writable_dir
    from .devices import pick_device
    from .evaluation import evaluate, format_table, get_protocol
    from .files import write_json
    from .loading import load_model_from_checkpoint
    from .schema import parse_override

    ap = Parser(
        prog="python -m trainables.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--protocol", default="quick", help="basic, quick, paper, standard or imagenet")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--transfer-source", default=None, help="checkpoint the transfer attack is crafted on")
    ap.add_argument("--model", default=None, help="expected architecture (refused if the checkpoint differs)")
    ap.add_argument("--n", type=int, default=None, help="test images (overrides the protocol)")
    ap.add_argument("--data-root", default=None, help="where the test data is (default: the data set's own default)")
    ap.add_argument("--download", action="store_true", help="fetch the data set when it is missing (CIFAR)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a protocol budget")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        path, value = parse_override(item)
        overrides[".".join(path)] = value
    if args.n is not None:
        overrides["n"] = args.n
    protocol = get_protocol(args.protocol, overrides)
    model, cfg, bundle = load_model_from_checkpoint(
        args.checkpoint, expect_model=args.model, data_root=args.data_root, download=args.download
    )
    source = None
    if args.transfer_source:
        source, _, _ = load_model_from_checkpoint(
            args.transfer_source, data_root=args.data_root, download=args.download
        )
    device = pick_device(args.device)
    out = writable_dir(args.output_dir, private=True)
    model.to(device)
    results = evaluate(
        model, bundle, protocol, eps=cfg.eps, seed=args.seed, device=device, transfer_source=source, log=print
    )
    results["checkpoint"] = str(args.checkpoint)
    write_json(out / EVAL_FILE, results)
    print(format_table(results))
    print(f"wrote {out / EVAL_FILE}")
    return 0


def cli() -> None:
    from .cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
