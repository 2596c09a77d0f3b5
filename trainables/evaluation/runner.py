"""Robustness evaluation as a library: a protocol's attacks on one shard of the test images
(``evaluate_shard``), the metrics, worst case and masking checks of the union of shards
(``finish``), and both at once (``evaluate``). The Ray workers, the certification shards and the
command line (``python -m trainables.evaluate``) all call these. Every attack runs in fp32 with
BatchNorm in eval mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data import DATASETS, DataBundle
from .attacks import ATTACKS
from .context import EvalContext, Summary, zero_gradients
from .keys import worst_case_keys
from .masking import describe_flags, run_checks, summarize
from .protocols import Protocol
from .shard import Shard


def evaluate(
    model: nn.Module,
    bundle: DataBundle,
    protocol: Protocol,
    *,
    eps: float | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    transfer_source: nn.Module | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``protocol``'s attacks, in the registry's order, on the test split. Returns one flat
    dict of metrics (see README "Evaluation"), with each attack's seconds in ``attack_seconds``.
    The same as ``finish`` of the ``union`` of ``evaluate_shard`` over any cut of the images."""
    eps = protocol_eps(protocol, bundle.name, eps)
    shard = evaluate_shard(
        model, bundle, protocol, eps=eps, seed=seed, device=device, transfer_source=transfer_source, log=log
    )
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


def evaluate_shard(
    model: nn.Module,
    bundle: DataBundle,
    protocol: Protocol,
    *,
    eps: float,
    start: int = 0,
    stop: int | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    transfer_source: nn.Module | None = None,
    keep_adversarial: bool = False,
    log: Callable[[str], None] | None = None,
) -> Shard:
    """Measure images ``start`` to ``stop`` (protocol image indices) of ``protocol``'s images:
    every attack's per-image results, sums, maxima and seconds. ``finish(union(shards))`` makes
    the metrics."""
    device = device or next(model.parameters()).device
    x, y = bundle.test_tensors(protocol.n)
    stop = len(y) if stop is None else min(stop, len(y))
    ctx = EvalContext(
        model=model,
        bundle=bundle,
        x=x[start:stop],
        y=y[start:stop],
        eps=eps,
        step_frac=protocol.step_frac,
        batch_size=protocol.batch_size,
        device=device,
        seed=seed,
        say=log or (lambda s: None),
        start=start,
        transfer_source=transfer_source,
        protocol=protocol,
        keep_adversarial=keep_adversarial,
    )
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
    s.r.update(
        {
            "protocol": protocol.name,
            "protocol_budgets": protocol.budgets(),
            "eps": eps,
            "attack_step_size": protocol.step_frac * eps,
            "n_eval": shard.n,
            "dataset": dataset,
            "clean_acc": s.acc("clean"),
        }
    )
    for name, budget in protocol.attacks:
        ATTACKS.get(name).summarize(s, budget)
    s.r["zero_grad_frac"] = s.acc("zero_grad") if shard.n else float("nan")
    s.r.update(worst_case(shard.per_image, [k[:-4] for k in worst_case_keys(protocol)]))
    s.extra["bound_violations"] = {
        k.removeprefix("bound/"): v for k, v in shard.maxima.items() if k.startswith("bound/")
    }
    if protocol.checks:
        s.r.update(summarize(run_checks(s.r, s.extra)))
    s.r["max_bound_violation"] = max(s.extra["bound_violations"].values(), default=0.0)
    s.r["attack_seconds"] = {k: round(v, 3) for k, v in shard.seconds.items() if k != "total"}
    s.r["eval_time_s"] = shard.seconds.get("total", 0.0)
    return s.r


def worst_case_bits(per_image: dict[str, torch.Tensor], attacks: list[str]) -> str:
    """The per-image worst case as a string, ``"1"`` where an image is correct clean and under
    every white-box attack that ran on it, on the images all of them ran on (what a paired test
    of two models on the same images needs)."""
    ran = [a for a in attacks if a in per_image]
    m = min((len(per_image[a]) for a in ran), default=len(per_image.get("clean", [])))
    ok = per_image["clean"][:m].clone()
    for a in ran:
        ok &= per_image[a][:m]
    return "".join("1" if v else "0" for v in ok.tolist())


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
    return {
        "robust_acc_min": acc(ok),
        "robust_acc_min_n": m,
        "robust_acc_min_attacks": ran,
        "robust_acc_min_attack": weakest,
        "wc_clean_acc": acc(per_image["clean"]),
        **{f"wc_{a}_acc": acc(per_image[a]) for a in ran},
    }


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
