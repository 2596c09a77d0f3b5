"""Robustness evaluation: one function for the Ray workers and for the command line.

    python -m trainables.evaluate --checkpoint runs/train/checkpoint.pt --protocol quick \\
        --output-dir runs/eval [--transfer-source runs/natural/checkpoint.pt] [--n 500]

writes DIR/eval.json (one flat dict of stable metric names, see README "Evaluation") and
prints a table. Every attack runs in fp32 with BatchNorm in eval mode.
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from typing import Any, Callable

import torch
from torch import nn

from .attacks import bn_mode, brightness, contrast, cw_l2, grayscale, input_grad, pgd_linf, rotate
from .data import DATASETS, DataBundle
from .masking import run_checks, summarize
from .metrics import batched, predict
from .protocols import Protocol, get_protocol

# White-box L-inf accuracies at the protocol's eps; their minimum is the number to trust.
_LINF_PREFIXES = ("fgsm", "pgd", "cw_linf", "autoattack")


def pgd_name(steps: int, restarts: int) -> str:
    return f"pgd{steps}_acc" if restarts == 1 else f"pgd{steps}x{restarts}_acc"


class _AALog(logging.Handler):
    """Collects AutoAttack's per-attack robust accuracy from its logger."""

    pattern = re.compile(r"robust accuracy after ([A-Z\-]+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.steps: dict[str, float] = {}
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        m = self.pattern.search(msg)
        if m:
            self.steps[m.group(1).lower()] = float(m.group(2)) / 100
        elif record.levelno >= logging.WARNING:
            self.warnings.append(msg)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
               device: torch.device, batch_size: int) -> tuple[torch.Tensor, dict[str, float], list[str]]:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), from ``pyautoattack``.
    Returns adversarial inputs (CPU), robust accuracy after each attack, and its warnings."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler = _AALog()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        with bn_mode(model, "eval"), torch.autocast(device_type=device.type, enabled=False):
            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)
            x_adv, _ = aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return x_adv.detach().cpu(), handler.steps, handler.warnings


def _violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    ball = ((x_adv - x).abs() - eps).clamp(min=0).max().item() if len(x) else 0.0
    box = max((x_adv - 1).clamp(min=0).max().item(), (-x_adv).clamp(min=0).max().item()) if len(x) else 0.0
    return max(ball, box)


def evaluate(model: nn.Module, bundle: DataBundle, protocol: Protocol, *, eps: float | None = None,
             seed: int = 0, device: torch.device | None = None, transfer_source: nn.Module | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``protocol`` on the test split. Returns one flat dict of metrics (see README)."""
    p = protocol
    device = device or next(model.parameters()).device
    eps = p.eps if p.eps is not None else (eps if eps is not None else DATASETS.get(bundle.name).eps)
    step = p.step_frac * eps
    x, y = bundle.test_tensors(p.n)
    n = len(y)
    bs = p.batch_size
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(seed)
    say = log or (lambda s: None)
    t_start = time.perf_counter()

    r: dict[str, Any] = {"protocol": p.name, "protocol_budgets": p.budgets(), "eps": eps,
                         "attack_step_size": step, "n_eval": n, "dataset": bundle.name}
    extra: dict[str, Any] = {"bound_violations": {}}
    robust: dict[str, torch.Tensor] = {}  # per-image correctness under each attack

    def run(name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], xs=x, ys=y, eps_=eps,
            target: nn.Module = model) -> torch.Tensor:
        t0 = time.perf_counter()
        x_adv = batched(fn, xs, ys, batch_size=bs, device=device)
        extra["bound_violations"][name] = _violation(x_adv, xs, eps_)
        ok = predict(target, x_adv, batch_size=bs, device=device) == ys
        say(f"  {name}: {ok.float().mean().item():.4f} ({time.perf_counter() - t0:.1f}s)")
        return ok

    clean_ok = predict(model, x, batch_size=bs, device=device) == y
    r["clean_acc"] = clean_ok.float().mean().item()
    say(f"  clean: {r['clean_acc']:.4f}")

    def pgd(steps: int, restarts: int = 1, loss: str = "ce", eps_: float = eps, net: nn.Module = model,
            step_: float | None = None):
        return lambda xb, yb: pgd_linf(net, xb, yb, eps=eps_, steps=steps, step_size=step_ if step_ else p.step_frac * eps_,
                                       restarts=restarts, loss=loss, bn="eval", generator=gen)

    if p.fgsm:
        robust["fgsm"] = run("fgsm", lambda xb, yb: pgd_linf(model, xb, yb, eps=eps, steps=1, step_size=eps,
                                                              random_start=False, bn="eval"))
        r["fgsm_acc"] = robust["fgsm"].float().mean().item()
    for steps, restarts in p.pgd:
        name = pgd_name(steps, restarts)
        robust[name[:-4]] = run(name[:-4], pgd(steps, restarts))
        r[name] = robust[name[:-4]].float().mean().item()
    if p.cw_linf_steps:
        robust["cw_linf"] = run("cw_linf", pgd(p.cw_linf_steps, loss="cw"))
        r["cw_linf_acc"] = robust["cw_linf"].float().mean().item()
    if p.cw_l2_search_steps:
        m = n if p.cw_l2_n is None else min(p.cw_l2_n, n)
        t0 = time.perf_counter()
        norms = batched(lambda xb, yb: cw_l2(model, xb, yb, search_steps=p.cw_l2_search_steps,
                                             iterations=p.cw_l2_iterations, bn="eval")[:, None],
                        x[:m], y[:m], batch_size=bs, device=device).squeeze(1)
        r["cw_l2_acc"] = (norms > p.cw_l2_radius).float().mean().item()
        r["cw_l2_radius"] = p.cw_l2_radius
        r["cw_l2_n"] = m
        found = norms[torch.isfinite(norms) & (norms > 0)]
        r["cw_l2_median_norm"] = found.median().item() if len(found) else float("nan")
        say(f"  cw_l2 @ {p.cw_l2_radius}: {r['cw_l2_acc']:.4f} ({time.perf_counter() - t0:.1f}s)")
    if p.transfer:
        if transfer_source is None:
            r["transfer_skipped"] = "no source model given"
        else:
            transfer_source = transfer_source.to(device)
            ok = run("transfer", pgd(p.transfer_steps, net=transfer_source))
            r["transfer_acc"] = ok.float().mean().item()
            same = robust.get(f"pgd{p.transfer_steps}")
            if same is None:
                same = run(f"pgd{p.transfer_steps}", pgd(p.transfer_steps))
            extra["transfer_white_box_acc"] = same.float().mean().item()
    if p.invariance:
        for name, fn in (("rotation", lambda t: rotate(t, 10.0)), ("brightness", lambda t: brightness(t, 1.5)),
                         ("contrast", lambda t: contrast(t, 2.0)), ("grayscale", grayscale)):
            r[f"inv_{name}_acc"] = (predict(model, fn(x), batch_size=bs, device=device) == y).float().mean().item()
    if p.autoattack_n != 0:
        m = n if p.autoattack_n is None else min(p.autoattack_n, n)
        t0 = time.perf_counter()
        x_aa, steps, warnings = autoattack(model, x[:m], y[:m], eps=eps, seed=seed, device=device, batch_size=bs)
        extra["bound_violations"]["autoattack"] = _violation(x_aa, x[:m], eps)
        aa_ok = predict(model, x_aa, batch_size=bs, device=device) == y[:m]
        r["autoattack_acc"] = aa_ok.float().mean().item()
        r["autoattack_n"] = m
        for k, v in steps.items():
            r[f"autoattack_after_{k.replace('-', '_')}_acc"] = v
        if warnings:
            r["autoattack_warnings"] = warnings
        extra["autoattack_steps"] = steps
        extra["autoattack_n"] = m
        if "pgd20" in robust:
            extra["autoattack_pgd20_acc"] = robust["pgd20"][:m].float().mean().item()
        say(f"  autoattack (n={m}): {r['autoattack_acc']:.4f} ({time.perf_counter() - t0:.1f}s)")
    if p.curve:
        m = n if p.curve_n is None else min(p.curve_n, n)
        xs, ys = x[:m], y[:m]
        r["curve_eps"] = [round(c * eps, 6) for c in p.curve]
        r["curve_pgd_acc"] = []
        extra["curve_n"] = m
        extra["curve_clean_acc"] = clean_ok[:m].float().mean().item()
        for e in r["curve_eps"]:
            if e == 0:
                acc = (predict(model, xs, batch_size=bs, device=device) == ys).float().mean().item()
            else:
                acc = run(f"curve_pgd20@{e:.4g}", pgd(20, eps_=e), xs, ys, eps_=e).float().mean().item()
            r["curve_pgd_acc"].append(acc)
        if p.curve_autoattack and p.autoattack_n != 0:
            r["curve_autoattack_acc"] = []
            for e in r["curve_eps"]:
                if e == 0:
                    r["curve_autoattack_acc"].append(extra["curve_clean_acc"])
                    continue
                x_aa, _, _ = autoattack(model, xs, ys, eps=e, seed=seed, device=device, batch_size=bs)
                extra["bound_violations"][f"curve_autoattack@{e:.4g}"] = _violation(x_aa, xs, e)
                r["curve_autoattack_acc"].append((predict(model, x_aa, batch_size=bs, device=device) == ys).float().mean().item())
    if p.large_eps > 0:
        m = n if p.curve_n is None else min(p.curve_n, n)
        r["large_eps"] = p.large_eps
        ok = run(f"pgd20@{p.large_eps:g}", pgd(20, eps_=p.large_eps, step_=p.large_eps / 4),
                 x[:m], y[:m], eps_=p.large_eps)
        r["large_eps_acc"] = ok.float().mean().item()
    for e in p.targeted_eps:
        g = torch.Generator().manual_seed(seed + 1)
        offset = torch.randint(1, bundle.num_classes, (n,), generator=g)
        targets = (y + offset) % bundle.num_classes  # a random class other than the true one
        t0 = time.perf_counter()
        x_adv = torch.cat([pgd_linf(model, x[i:i + bs].to(device), y[i:i + bs].to(device), eps=e,
                                    steps=p.targeted_steps, step_size=p.step_frac * e,
                                    target=targets[i:i + bs].to(device), bn="eval", generator=gen).cpu()
                           for i in range(0, n, bs)])
        extra["bound_violations"][f"targeted@{e:g}"] = _violation(x_adv, x, e)
        r[f"pgd_targeted_acc_eps{e:g}"] = (predict(model, x_adv, batch_size=bs, device=device) == y).float().mean().item()
        say(f"  targeted pgd @ {e:g}: {r[f'pgd_targeted_acc_eps{e:g}']:.4f} ({time.perf_counter() - t0:.1f}s)")

    # zero input gradients (the fraction of images whose CE gradient is exactly zero)
    with bn_mode(model, "eval"), torch.enable_grad():
        zero = 0
        for i in range(0, n, bs):
            g = input_grad(model, x[i:i + bs].to(device), y[i:i + bs].to(device))
            zero += int((g.flatten(1).abs().amax(1) == 0).sum())
    r["zero_grad_frac"] = zero / max(n, 1)

    linf = {k: v for k, v in r.items() if k.endswith("_acc") and k.startswith(_LINF_PREFIXES)
            and not k.startswith(("autoattack_after", "pgd_targeted"))}
    if linf:
        worst = min(linf, key=linf.get)
        r["robust_acc_min"] = linf[worst]
        r["robust_acc_min_attack"] = worst[:-4]
    if p.checks:
        r.update(summarize(run_checks(r, extra)))
    r["max_bound_violation"] = max(extra["bound_violations"].values(), default=0.0)
    r["eval_time_s"] = time.perf_counter() - t_start
    return r


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
        if flags:
            lines.append("  GRADIENT-MASKING FLAGS: " + ", ".join(flags))
            for name in flags:
                lines.append(f"    {name}: {r['masking_checks'][name]['detail']}")
        else:
            ran = sum(1 for c in r.get("masking_checks", {}).values() if c["ok"] is not None)
            lines.append(f"  masking checks: none flagged ({ran} run)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def load_model_from_checkpoint(path: str, *, expect_model: str | None = None,
                               data_root: str | None = None) -> tuple[nn.Module, Any, DataBundle]:
    """Model, resolved config and data of one of our checkpoints."""
    from .checkpoint import load_checkpoint, load_weights
    from .errors import CheckpointError
    from .loop import build_model
    from .settings import resolve
    from dataclasses import replace

    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path}: holds no training config (not written by trainables)")
    raw = dict(state["config"])
    raw["init_checkpoint"] = None
    if data_root is not None:
        raw["data"] = {**raw.get("data", {}), "root": data_root}
    cfg = resolve(raw)
    if expect_model is not None and expect_model != cfg.model:
        raise CheckpointError(f"{path}: checkpoint architecture is {cfg.model}, not the requested {expect_model}")
    from .data import get_dataset

    bundle = get_dataset(cfg.dataset, root=cfg.data.root, download=cfg.data.download, image_size=cfg.data.image_size)
    model = build_model(replace(cfg, init_checkpoint=None), bundle)
    load_weights(model, state, path, cfg.model)
    return model, cfg, bundle


def main(argv: list[str] | None = None) -> int:
    from .cli import writable_dir, write_json
    from .config import parse_override
    from .loop import pick_device

    ap = argparse.ArgumentParser(prog="python -m trainables.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--protocol", default="quick", help="basic, quick, paper, standard or imagenet")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--transfer-source", default=None, help="checkpoint the transfer attack is crafted on")
    ap.add_argument("--model", default=None, help="expected architecture (refused if the checkpoint differs)")
    ap.add_argument("--n", type=int, default=None, help="test images (overrides the protocol)")
    ap.add_argument("--data-root", default=None)
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
    model, cfg, bundle = load_model_from_checkpoint(args.checkpoint, expect_model=args.model, data_root=args.data_root)
    source = None
    if args.transfer_source:
        source, _, _ = load_model_from_checkpoint(args.transfer_source, data_root=args.data_root)
    out = writable_dir(args.output_dir)
    device = pick_device(args.device)
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
