"""Robustness evaluation: one function for the Ray workers and for the command line.

    python -m trainables.evaluate --checkpoint runs/train/checkpoint.pt --protocol quick \\
        --output-dir runs/eval [--transfer-source runs/natural/checkpoint.pt] [--n 500]

writes DIR/eval.json (one flat dict of stable metric names, see README "Evaluation") and
prints a table. Every attack runs in fp32 with BatchNorm in eval mode.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import torch
from torch import nn

from .data import DATASETS, DataBundle
from .eval_attacks import ATTACKS, EvalContext, Shard, Summary, union, worst_case_keys, zero_gradients
from .masking import describe_flags, run_checks, summarize
from .protocols import Protocol, get_protocol


def evaluate(model: nn.Module, bundle: DataBundle, protocol: Protocol, *, eps: float | None = None,
             seed: int = 0, device: torch.device | None = None, transfer_source: nn.Module | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``protocol``'s attacks, in the registry's order, on the test split. Returns one flat
    dict of metrics (see README "Evaluation"), with each attack's seconds in ``attack_seconds``.
    The same as ``finish`` of the ``union`` of ``evaluate_shard`` over any cut of the images."""
    eps = protocol_eps(protocol, bundle.name, eps)
    shard = evaluate_shard(model, bundle, protocol, eps=eps, seed=seed, device=device,
                           transfer_source=transfer_source, log=log)
    return finish(shard, protocol, eps=eps, dataset=bundle.name)


def protocol_eps(protocol: Protocol, dataset: str, eps: float | None = None) -> float:
    """The L-inf budget: the protocol's own, else the one given (the trial's), else the data set's."""
    if protocol.eps is not None:
        return protocol.eps
    return eps if eps is not None else DATASETS.get(dataset).eps


def evaluation_size(bundle: DataBundle, protocol: Protocol) -> int:
    """How many test images the protocol evaluates (its ``n``, at most the test split)."""
    total = len(bundle.y_test) if bundle.y_test is not None else len(bundle.test_dataset)
    return total if protocol.n is None else min(protocol.n, total)


def evaluate_shard(model: nn.Module, bundle: DataBundle, protocol: Protocol, *, eps: float, start: int = 0,
                   stop: int | None = None, seed: int = 0, device: torch.device | None = None,
                   transfer_source: nn.Module | None = None, keep_adversarial: bool = False,
                   log: Callable[[str], None] | None = None) -> Shard:
    """Measure images ``start`` to ``stop`` (protocol image indices) of ``protocol``'s images:
    every attack's per-image results, sums, maxima and seconds. ``finish(union(shards))`` makes
    the metrics."""
    device = device or next(model.parameters()).device
    x, y = bundle.test_tensors(protocol.n)
    stop = len(y) if stop is None else min(stop, len(y))
    ctx = EvalContext(model=model, bundle=bundle, x=x[start:stop], y=y[start:stop], eps=eps, step_frac=protocol.step_frac,
                      batch_size=protocol.batch_size, device=device, seed=seed, say=log or (lambda s: None), start=start,
                      transfer_source=transfer_source, protocol=protocol, keep_adversarial=keep_adversarial)
    t0 = time.perf_counter()
    ctx.per_image["clean"] = ctx.correct_on(ctx.x, ctx.y)
    ctx.say(f"  clean: {ctx.per_image['clean'].float().mean().item():.4f}")
    for name, budget in protocol.attacks:
        ATTACKS.get(name).run(ctx, budget)
    zero_gradients(ctx)
    ctx.shard.seconds["total"] = time.perf_counter() - t0
    return ctx.shard


def finish(shard: Shard, protocol: Protocol, *, eps: float, dataset: str) -> dict[str, Any]:
    """The metrics of an evaluation from its per-image results (one shard, or the union of
    several): every attack's numbers, the per-image worst case, the masking checks."""
    s = Summary(shard, eps, dataset)
    s.r.update({"protocol": protocol.name, "protocol_budgets": protocol.budgets(), "eps": eps,
                "attack_step_size": protocol.step_frac * eps, "n_eval": shard.n, "dataset": dataset,
                "clean_acc": s.acc("clean")})
    for name, budget in protocol.attacks:
        ATTACKS.get(name).summarize(s, budget)
    s.r["zero_grad_frac"] = s.acc("zero_grad") if shard.n else float("nan")
    s.r.update(worst_case(shard.per_image, [k[:-4] for k in worst_case_keys(protocol)]))
    s.extra["bound_violations"] = {k.removeprefix("bound/"): v for k, v in shard.maxima.items() if k.startswith("bound/")}
    if protocol.checks:
        s.r.update(summarize(run_checks(s.r, s.extra)))
    s.r["max_bound_violation"] = max(s.extra["bound_violations"].values(), default=0.0)
    s.r["attack_seconds"] = {k: round(v, 3) for k, v in shard.seconds.items() if k != "total"}
    s.r["eval_time_s"] = shard.seconds.get("total", 0.0)
    return s.r


def worst_case(per_image: dict[str, torch.Tensor], attacks: list[str]) -> dict[str, Any]:
    """The per-image worst case: on the images every white-box L-inf attack of the protocol ran
    on (the first ``robust_acc_min_n``), the fraction correct clean and under every one of
    them. This, not any single attack's accuracy, is the number to trust. Beside it, clean
    accuracy and each of those attacks on the same images (``wc_*``): numbers read side by side
    in a table are then measured on the same images."""
    ran = [a for a in attacks if a in per_image]
    if not ran:
        return {}
    m = min(len(per_image[a]) for a in ran)
    ok = per_image["clean"][:m].clone()
    for a in ran:
        ok &= per_image[a][:m]
    acc = lambda t: t[:m].float().mean().item() if m else float("nan")  # noqa: E731
    weakest = min(ran, key=lambda a: acc(per_image[a]))
    return {"robust_acc_min": acc(ok), "robust_acc_min_n": m, "robust_acc_min_attacks": ran,
            "robust_acc_min_attack": weakest, "wc_clean_acc": acc(per_image["clean"]),
            **{f"wc_{a}_acc": acc(per_image[a]) for a in ran}}


def format_table(r: dict[str, Any]) -> str:
    """Metrics as a two-column table, with the masking flags spelled out."""
    rows = [(k, v) for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    w = max((len(k) for k, _ in rows), default=10)
    lines = [f"protocol {r.get('protocol')}  eps {r.get('eps', float('nan')):.4g}  n {r.get('n_eval')}"]
    lines += [f"  {k:<{w}}  {v:.4f}" if isinstance(v, float) else f"  {k:<{w}}  {v}" for k, v in rows]
    if "autoattack_acc" not in r:
        lines.append("  note: no AutoAttack in this protocol; PGD numbers are upper bounds on robustness")
    flags = r.get("masking_flags")
    if flags is not None:
        ran = sum(1 for c in r.get("masking_checks", {}).values() if c["ok"] is not None)
        lines.append(f"  masking checks ({ran} run): {describe_flags(flags)}")
        for name in flags:
            lines.append(f"    {name}: {r['masking_checks'][name]['detail']}")
    for name, seconds in (r.get("attack_seconds") or {}).items():
        lines.append(f"  seconds {name:<{max(1, w - 8)}}  {seconds:.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def load_model_from_checkpoint(path: str, *, expect_model: str | None = None, data_root: str | None = None,
                               download: bool | None = None) -> tuple[nn.Module, Any, DataBundle]:
    """Model, resolved config and data of one of our checkpoints. ``data_root`` and
    ``download`` (when given) replace what the checkpoint's config says: the command line
    decides where data is read and whether anything is fetched, not a file."""
    from .checkpoint import load_checkpoint, load_weights
    from .errors import CheckpointError
    from .loop import build_model
    from .config import resolve
    from dataclasses import replace

    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config (not written by trainables)")
    raw = dict(state["config"])
    raw["init_checkpoint"] = None
    if download is not None:  # the command line decides both (trainables.evaluate)
        raw["data"] = {**(raw.get("data") or {}), "root": data_root, "download": download}
    elif data_root is not None:
        raw["data"] = {**(raw.get("data") or {}), "root": data_root}
    cfg = resolve(raw)
    if expect_model is not None and expect_model != cfg.model:
        raise CheckpointError(f"{path}: checkpoint architecture is {cfg.model}, not the requested {expect_model}")
    from .data import get_dataset

    bundle = get_dataset(cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size)
    model = build_model(replace(cfg, init_checkpoint=None), bundle)
    load_weights(model, state, path, cfg.model)
    return model, cfg, bundle


def main(argv: list[str] | None = None) -> int:
    from .cli import Parser, writable_dir, write_json
    from .schema import parse_override
    from .loop import pick_device

    ap = Parser(prog="python -m trainables.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    model, cfg, bundle = load_model_from_checkpoint(args.checkpoint, expect_model=args.model, data_root=args.data_root,
                                                    download=args.download)
    source = None
    if args.transfer_source:
        source, _, _ = load_model_from_checkpoint(args.transfer_source, data_root=args.data_root, download=args.download)
    device = pick_device(args.device)
    out = writable_dir(args.output_dir, private=True)
    model.to(device)
    results = evaluate(model, bundle, protocol, eps=cfg.eps, seed=args.seed, device=device,
                       transfer_source=source, log=print)
    results["checkpoint"] = str(args.checkpoint)
    write_json(out / "eval.json", results)
    print(format_table(results))
    print(f"wrote {out / 'eval.json'}")
    return 0


def cli() -> None:
    from .cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
