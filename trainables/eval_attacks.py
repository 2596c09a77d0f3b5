"""The evaluation's attacks as a registry: each entry has a name, a typed budget, a run function
and the metric keys it writes. ``evaluate()`` runs a protocol's (attack, budget) list in the
registry's order; protocols, reports and summaries take names, columns and metric keys from
here. Adding an attack is one ``@register_attack`` entry (with its budget) plus its test.

Every attack works in [0, 1] pixel space, in fp32, with BatchNorm in eval mode. The math lives
in ``trainables.attacks``; what is here decides budgets, images and what is recorded.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .attacks import bn_mode, brightness, contrast, cw_l2, grayscale, pgd_linf, rotate
from .schema import check
from .data import DATASETS, DataBundle
from .metrics import batched, predict
from .registry import Registry

Columns = list[tuple[str, str]]  # (table label, metric key)


@dataclass(frozen=True)
class Attack:
    name: str
    Budget: type  # frozen dataclass; ``enabled()`` says whether a budget runs the attack at all
    run: Callable[["EvalContext", Any], None]
    metrics: Callable[[Any], list[str]]  # keys written into the result
    columns: Callable[[Any], Columns]  # what a results table shows
    # keys whose per-image results count in the worst case (white-box L-inf at the protocol's eps)
    worst_case: Callable[[Any], list[str]]
    smoke: Callable[[Any], dict[str, Any]]  # budget fields that make it run in seconds
    doc: str


ATTACKS: Registry[Attack] = Registry("attack")


def attack_order() -> list[str]:
    """Registration order, which is the order of evaluation (later attacks reuse earlier ones)."""
    return ATTACKS.ordered()


def register_attack(name: str, Budget: type, *, metrics: Callable[[Any], list[str]],
                    columns: Callable[[Any], Columns] | None = None,
                    worst_case: Callable[[Any], list[str]] | None = None,
                    smoke: Callable[[Any], dict[str, Any]] | None = None):
    def deco(run: Callable[["EvalContext", Any], None]):
        cols = columns or (lambda b: [(name, k) for k in metrics(b) if k.endswith("_acc")])
        ATTACKS.register(name)(Attack(name, Budget, run, metrics, cols, worst_case or (lambda b: []),
                                      smoke or (lambda b: {}), (run.__doc__ or "").strip()))
        return run

    return deco


# ----------------------------------------------------------------------------- the context
@dataclass
class EvalContext:
    """What every attack reads (model, images, budget, device) and writes (metrics, per-image
    correctness, internals for the masking checks, seconds)."""

    model: nn.Module
    bundle: DataBundle
    x: torch.Tensor  # (n, C, H, W) test images in [0, 1], CPU
    y: torch.Tensor
    eps: float
    step_frac: float
    batch_size: int
    device: torch.device
    seed: int
    gen: torch.Generator
    say: Callable[[str], None]
    transfer_source: nn.Module | None = None
    protocol: Any = None
    r: dict[str, Any] = field(default_factory=dict)  # the reported metrics
    extra: dict[str, Any] = field(default_factory=lambda: {"bound_violations": {}})  # for the checks
    correct: dict[str, torch.Tensor] = field(default_factory=dict)  # per-image, on the first len() images
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.y)

    def first(self, m: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.n if m is None else min(m, self.n)
        return self.x[:m], self.y[:m]

    def correct_on(self, x_adv: torch.Tensor, ys: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        return predict(net or self.model, x_adv, batch_size=self.batch_size, device=self.device) == ys

    def robust(self, x_adv: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Per image: correct when clean AND on ``x_adv`` (an image the model gets wrong clean
        is never robust, whatever an attack's output does to it). ``ys`` are the first images."""
        return self.correct_on(x_adv, ys) & self.correct["clean"][:len(ys)]

    def attack(self, name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], xs=None, ys=None,
               eps: float | None = None) -> torch.Tensor:
        """Run ``fn`` batch by batch; record its bound violation and seconds; per-image correctness."""
        xs = self.x if xs is None else xs
        ys = self.y if ys is None else ys
        t0 = time.perf_counter()
        x_adv = batched(fn, xs, ys, batch_size=self.batch_size, device=self.device)
        self.extra["bound_violations"][name] = violation(x_adv, xs, self.eps if eps is None else eps)
        ok = self.robust(x_adv, ys)
        self.seconds[name] = time.perf_counter() - t0
        self.say(f"  {name}: {ok.float().mean().item():.4f} ({self.seconds[name]:.1f}s)")
        return ok

    def pgd(self, steps: int, restarts: int = 1, *, loss: str = "ce", eps: float | None = None,
            net: nn.Module | None = None, step_size: float | None = None, kappa: float = float("inf"),
            keep: str = "best"):
        """PGD on ``net`` (this model by default), keeping the best iterate per image."""
        eps = self.eps if eps is None else eps
        net = self.model if net is None else net
        step = self.step_frac * eps if step_size is None else step_size
        return lambda xb, yb: pgd_linf(net, xb, yb, eps=eps, steps=steps, step_size=step, restarts=restarts,
                                       loss=loss, kappa=kappa, bn="eval", generator=self.gen, keep=keep)


def violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    """How far adversarial inputs leave the eps ball or the [0, 1] box (0 when they do not)."""
    if not len(x):
        return 0.0
    ball = ((x_adv - x).abs() - eps).clamp(min=0).max().item()
    box = max((x_adv - 1).clamp(min=0).max().item(), (-x_adv).clamp(min=0).max().item())
    return max(ball, box)


def _acc(ok: torch.Tensor) -> float:
    return ok.float().mean().item() if len(ok) else float("nan")


def _n(where: str, n: int | None) -> None:
    if n is not None:
        check(n >= 0, where, "n", "an integer >= 0 or null (all images)", n)


# ----------------------------------------------------------------------------- FGSM
@dataclass(frozen=True)
class NoBudget:
    def enabled(self) -> bool:
        return True


@register_attack("fgsm", NoBudget, metrics=lambda b: ["fgsm_acc"], columns=lambda b: [("FGSM", "fgsm_acc")],
                 worst_case=lambda b: ["fgsm_acc"])
def run_fgsm(ctx: EvalContext, b: NoBudget) -> None:
    """One signed-gradient step of size eps from the clean input (the masking check's one-step attack)."""
    ctx.correct["fgsm"] = ctx.attack("fgsm", lambda xb, yb: pgd_linf(ctx.model, xb, yb, eps=ctx.eps, steps=1,
                                                                     step_size=ctx.eps, random_start=False, bn="eval"))
    ctx.r["fgsm_acc"] = _acc(ctx.correct["fgsm"])


# ----------------------------------------------------------------------------- PGD
def pgd_key(steps: int, restarts: int) -> str:
    return f"pgd{steps}" if restarts == 1 else f"pgd{steps}x{restarts}"


def pgd_label(steps: int, restarts: int) -> str:
    return f"PGD-{steps}" if restarts == 1 else f"{restarts}xPGD-{steps}"


@dataclass(frozen=True)
class PGDBudget:
    runs: tuple[tuple[int, int], ...] = ((20, 1),)  # (steps, restarts) -> pgd{steps}[x{restarts}]_acc

    def validate(self, where: str) -> None:
        check(all(len(r) == 2 and r[0] >= 1 and r[1] >= 1 for r in self.runs), where, "runs",
              "pairs (steps >= 1, restarts >= 1)", self.runs)

    def enabled(self) -> bool:
        return bool(self.runs)


def _pgd_keys(b: PGDBudget) -> list[str]:
    return [f"{pgd_key(s, r)}_acc" for s, r in b.runs]


@register_attack("pgd", PGDBudget, metrics=_pgd_keys, worst_case=_pgd_keys,
                 columns=lambda b: [(pgd_label(s, r), f"{pgd_key(s, r)}_acc") for s, r in b.runs],
                 smoke=lambda b: {"runs": [list(x) for x in sorted({(min(s, 40), min(r, 2)) for s, r in b.runs})]})
def run_pgd(ctx: EvalContext, b: PGDBudget) -> None:
    """PGD-L-inf with a uniform random start in the eps ball, step step_frac x eps, per run of
    (steps, restarts); an image counts as broken if any restart breaks it."""
    runs = ctx.extra.setdefault("pgd_runs", {})
    for steps, restarts in b.runs:
        key = pgd_key(steps, restarts)
        ctx.correct[key] = ctx.attack(key, ctx.pgd(steps, restarts))
        ctx.r[f"{key}_acc"] = runs[(steps, restarts)] = _acc(ctx.correct[key])


# ----------------------------------------------------------------------------- C&W L-inf
@dataclass(frozen=True)
class CWLinfBudget:
    steps: int = 30  # PGD steps on the C&W margin loss; 0 = off
    kappa: float = 50.0  # the margin is capped at kappa (Madry's C&W loss), in logit units

    def validate(self, where: str) -> None:
        check(self.steps >= 0, where, "steps", "an integer >= 0", self.steps)
        check(self.kappa > 0, where, "kappa", "a number > 0", self.kappa)

    def enabled(self) -> bool:
        return self.steps > 0


@register_attack("cw_linf", CWLinfBudget, metrics=lambda b: ["cw_linf_acc"], columns=lambda b: [("C&W-Linf", "cw_linf_acc")],
                 worst_case=lambda b: ["cw_linf_acc"], smoke=lambda b: {"steps": min(b.steps, 10)})
def run_cw_linf(ctx: EvalContext, b: CWLinfBudget) -> None:
    """PGD-L-inf on the C&W margin loss max_{j != y} z_j - z_y."""
    ctx.correct["cw_linf"] = ctx.attack("cw_linf", ctx.pgd(b.steps, loss="cw", kappa=b.kappa))
    ctx.r["cw_linf_acc"] = _acc(ctx.correct["cw_linf"])


# ----------------------------------------------------------------------------- C&W L2
@dataclass(frozen=True)
class CWL2Budget:
    search_steps: int = 3  # binary-search steps over the constant c; 0 = off
    iterations: int = 100  # Adam steps per search step
    radius: float | None = None  # report accuracy at this L2 radius (pixel units); None = the data set's
    n: int | None = None  # images (None = the protocol's)

    def validate(self, where: str) -> None:
        check(self.search_steps >= 0, where, "search_steps", "an integer >= 0", self.search_steps)
        check(self.iterations >= 1, where, "iterations", "an integer >= 1", self.iterations)
        if self.radius is not None:
            check(self.radius > 0, where, "radius", "a number > 0 or null (the data set's)", self.radius)
        _n(where, self.n)

    def enabled(self) -> bool:
        return self.search_steps > 0 and self.n != 0


@register_attack("cw_l2", CWL2Budget, metrics=lambda b: ["cw_l2_acc", "cw_l2_radius", "cw_l2_n", "cw_l2_median_norm"],
                 columns=lambda b: [("C&W-L2", "cw_l2_acc")],
                 smoke=lambda b: {"n": 10, "iterations": min(b.iterations, 30), "search_steps": min(b.search_steps, 2)})
def run_cw_l2(ctx: EvalContext, b: CWL2Budget) -> None:
    """Carlini-Wagner L2 (minimal distance per image); robust at ``radius`` if none is found within it."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    norms = batched(lambda xb, yb: cw_l2(ctx.model, xb, yb, search_steps=b.search_steps, iterations=b.iterations,
                                         bn="eval")[:, None], xs, ys, batch_size=ctx.batch_size, device=ctx.device).squeeze(1)
    ctx.seconds["cw_l2"] = time.perf_counter() - t0
    radius = b.radius if b.radius is not None else DATASETS.get(ctx.bundle.name).cw_l2_radius
    ctx.r["cw_l2_acc"] = _acc((norms > radius) & ctx.correct["clean"][:len(ys)])
    ctx.r["cw_l2_radius"] = radius
    ctx.r["cw_l2_n"] = len(ys)
    found = norms[torch.isfinite(norms) & (norms > 0)]
    ctx.r["cw_l2_median_norm"] = found.median().item() if len(found) else float("nan")
    ctx.say(f"  cw_l2 @ {radius:g}: {ctx.r['cw_l2_acc']:.4f} ({ctx.seconds['cw_l2']:.1f}s)")


# ----------------------------------------------------------------------------- transfer
@dataclass(frozen=True)
class TransferBudget:
    steps: int = 20  # PGD steps on the source model

    def validate(self, where: str) -> None:
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)

    def enabled(self) -> bool:
        return True


@register_attack("transfer", TransferBudget, metrics=lambda b: ["transfer_acc"], columns=lambda b: [("transfer", "transfer_acc")],
                 smoke=lambda b: {"steps": min(b.steps, 20)})
def run_transfer(ctx: EvalContext, b: TransferBudget) -> None:
    """PGD crafted on a source model (a natural one by default), evaluated on this one."""
    if ctx.transfer_source is None:
        ctx.r["transfer_skipped"] = "no source model given"
        ctx.say("  transfer: skipped (no source model given)")
        return
    source = ctx.transfer_source.to(ctx.device)
    ok = ctx.attack("transfer", ctx.pgd(b.steps, net=source, keep="last"))
    ctx.r["transfer_acc"] = _acc(ok)
    same = ctx.correct.get(pgd_key(b.steps, 1))
    if same is None:
        same = ctx.attack(pgd_key(b.steps, 1), ctx.pgd(b.steps))
    ctx.extra["transfer_white_box_acc"] = _acc(same)


# ----------------------------------------------------------------------------- invariance
@dataclass(frozen=True)
class InvarianceBudget:
    rotation_deg: float = 10.0  # the SPROUT paper's Table 5 transformations
    brightness: float = 1.5
    contrast: float = 2.0

    def enabled(self) -> bool:
        return True


INVARIANCE_KEYS = ["inv_rotation_acc", "inv_brightness_acc", "inv_contrast_acc", "inv_grayscale_acc"]


@register_attack("invariance", InvarianceBudget, metrics=lambda b: list(INVARIANCE_KEYS),
                 columns=lambda b: [(k[4:-4], k) for k in INVARIANCE_KEYS])
def run_invariance(ctx: EvalContext, b: InvarianceBudget) -> None:
    """Accuracy under rotation, brightness, contrast and grayscale (no attack)."""
    t0 = time.perf_counter()
    for name, fn in (("rotation", lambda t: rotate(t, b.rotation_deg)), ("brightness", lambda t: brightness(t, b.brightness)),
                     ("contrast", lambda t: contrast(t, b.contrast)), ("grayscale", grayscale)):
        ctx.r[f"inv_{name}_acc"] = _acc(ctx.correct_on(fn(ctx.x), ctx.y))
    ctx.seconds["invariance"] = time.perf_counter() - t0
    ctx.say("  invariance: " + " ".join(f"{k[4:-4]} {ctx.r[k]:.4f}" for k in INVARIANCE_KEYS) + f" ({ctx.seconds['invariance']:.1f}s)")


# ----------------------------------------------------------------------------- AutoAttack
@dataclass(frozen=True)
class AutoAttackBudget:
    n: int | None = None  # images (None = the protocol's; 0 = off)

    def validate(self, where: str) -> None:
        _n(where, self.n)

    def enabled(self) -> bool:
        return self.n != 0


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
        # AutoAttack seeds torch's global generators with ``seed``: run it on a fork of them, so
        # that evaluating a model does not change the random stream of whatever runs next
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), bn_mode(model, "eval"), \
                torch.autocast(device_type=device.type, enabled=False):
            aa = AutoAttack(model, norm="Linf", eps=eps, version="standard", device=device, seed=seed)
            x_adv, _ = aa.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return x_adv.detach().cpu(), handler.steps, handler.warnings


@register_attack("autoattack", AutoAttackBudget,
                 metrics=lambda b: ["autoattack_acc", "autoattack_n", "autoattack_after_apgd_ce_acc", "autoattack_after_apgd_t_acc",
                                    "autoattack_after_fab_t_acc", "autoattack_after_square_acc"],
                 columns=lambda b: [("AutoAttack", "autoattack_acc")], worst_case=lambda b: ["autoattack_acc"],
                 smoke=lambda b: {"n": 10})
def run_aa(ctx: EvalContext, b: AutoAttackBudget) -> None:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    x_aa, steps, warnings = autoattack(ctx.model, xs, ys, eps=ctx.eps, seed=ctx.seed, device=ctx.device,
                                           batch_size=ctx.batch_size)
    ctx.extra["bound_violations"]["autoattack"] = violation(x_aa, xs, ctx.eps)
    ctx.correct["autoattack"] = ctx.robust(x_aa, ys)
    ctx.seconds["autoattack"] = time.perf_counter() - t0
    m = len(ys)
    ctx.r["autoattack_acc"] = _acc(ctx.correct["autoattack"])
    ctx.r["autoattack_n"] = m
    for k, v in steps.items():
        ctx.r[f"autoattack_after_{k.replace('-', '_')}_acc"] = v
    if warnings:
        ctx.r["autoattack_warnings"] = warnings
    ctx.extra["autoattack_steps"] = steps
    ctx.extra["autoattack_n"] = m
    if "pgd20" in ctx.correct:
        ctx.extra["autoattack_pgd20_acc"] = _acc(ctx.correct["pgd20"][:m])
    ctx.say(f"  autoattack (n={m}): {ctx.r['autoattack_acc']:.4f} ({ctx.seconds['autoattack']:.1f}s)")


# ----------------------------------------------------------------------------- eps curve
@dataclass(frozen=True)
class CurveBudget:
    multiples: tuple[float, ...] = ()  # eps multiples (0 included for the eps-0 check); empty = off
    n: int | None = None  # images (None = the protocol's)
    autoattack: bool = False  # AutoAttack at every point too
    pgd_steps: int = 20

    def validate(self, where: str) -> None:
        check(all(m >= 0 for m in self.multiples), where, "multiples", "numbers >= 0", self.multiples)
        check(self.pgd_steps >= 1, where, "pgd_steps", "an integer >= 1", self.pgd_steps)
        _n(where, self.n)

    def enabled(self) -> bool:
        return bool(self.multiples) and self.n != 0


def _curve_smoke(b: CurveBudget) -> dict[str, Any]:
    """PGD on 40 images; with AutoAttack, on AutoAttack's smoke images and only at eps 0, the
    protocol's eps (its own AutoAttack run, reused) and above: a point below the protocol's eps
    is a whole AutoAttack run on every clean-correct image, the cost of a smoke trial twice over."""
    if not b.autoattack:
        return {"n": 40}
    return {"n": 10, "multiples": [m for m in b.multiples if m == 0 or m >= 1]}


@register_attack("curve", CurveBudget, metrics=lambda b: ["curve_eps", "curve_pgd_acc"] + (["curve_autoattack_acc"] if b.autoattack else []),
                 columns=lambda b: [], smoke=lambda b: _curve_smoke(b))
def run_curve(ctx: EvalContext, b: CurveBudget) -> None:
    """Accuracy against eps: PGD (and AutoAttack if asked) at each multiple of eps.

    PGD runs at every point independently (a curve that rises with eps is a masking sign).
    AutoAttack runs from the smallest eps up, each point on the images no smaller eps broke
    (an adversarial input within a smaller ball is one within the larger), and reuses the
    protocol's own AutoAttack run at the protocol's eps."""
    xs, ys = ctx.first(b.n)
    m = len(ys)
    ctx.r["curve_eps"] = [round(c * ctx.eps, 6) for c in b.multiples]
    ctx.r["curve_pgd_acc"] = []
    ctx.extra["curve_n"] = m
    clean = ctx.correct["clean"][:m]
    ctx.extra["curve_clean_acc"] = _acc(clean)
    t0 = time.perf_counter()
    for e in ctx.r["curve_eps"]:
        name = f"curve_pgd{b.pgd_steps}@{e:.4g}"
        if e == 0:  # the whole attack pipeline with a zero budget: it must give back the clean input
            x0 = batched(ctx.pgd(b.pgd_steps, eps=0.0), xs, ys, batch_size=ctx.batch_size, device=ctx.device)
            ctx.extra["bound_violations"][name] = violation(x0, xs, 0.0)
            at0 = ctx.correct_on(x0, ys)
            ctx.extra["eps0_changed"] = int((at0 != clean).sum())
            acc = _acc(at0 & clean)
        elif e == ctx.eps and len(ctx.correct.get(pgd_key(b.pgd_steps, 1), ())) >= m:
            acc = _acc(ctx.correct[pgd_key(b.pgd_steps, 1)][:m])  # the same attack already ran on these images
        else:
            acc = _acc(ctx.attack(name, ctx.pgd(b.pgd_steps, eps=e), xs, ys, eps=e))
        ctx.r["curve_pgd_acc"].append(acc)
    if b.autoattack and ctx.protocol is not None and ctx.protocol.budget("autoattack") is not None:
        standing = clean.clone()  # robust at every smaller eps of the curve so far
        acc_at: dict[float, float] = {}
        for e in sorted(set(ctx.r["curve_eps"])):
            if e > 0:
                standing &= _aa_at(ctx, xs, ys, e, standing)
            acc_at[e] = _acc(standing)
        ctx.r["curve_autoattack_acc"] = [acc_at[e] for e in ctx.r["curve_eps"]]
    ctx.seconds["curve"] = time.perf_counter() - t0


def _aa_at(ctx: EvalContext, xs: torch.Tensor, ys: torch.Tensor, e: float, todo: torch.Tensor) -> torch.Tensor:
    """Per image of ``xs``: not broken by AutoAttack at ``e``, attacking only where ``todo``
    (elsewhere the answer is already False or known). The protocol's own AutoAttack run counts
    for the images it covered when ``e`` is the protocol's eps."""
    ok = torch.zeros(len(ys), dtype=torch.bool)
    todo = todo.clone()
    have = ctx.correct.get("autoattack")
    if e == ctx.eps and have is not None:
        k = min(len(have), len(ys))
        ok[:k] = have[:k]
        todo[:k] = False
    idx = todo.nonzero().squeeze(1)
    if len(idx):
        t0 = time.perf_counter()
        x_aa, _, _ = autoattack(ctx.model, xs[idx], ys[idx], eps=e, seed=ctx.seed, device=ctx.device,
                                batch_size=ctx.batch_size)
        ctx.extra["bound_violations"][f"curve_autoattack@{e:.4g}"] = violation(x_aa, xs[idx], e)
        ok[idx] = ctx.correct_on(x_aa, ys[idx])
        ctx.seconds[f"curve_autoattack@{e:.4g}"] = time.perf_counter() - t0
        ctx.say(f"  curve_autoattack@{e:.4g} (n={len(idx)}): {_acc(ok & ctx.correct['clean'][:len(ys)]):.4f} "
                f"({ctx.seconds[f'curve_autoattack@{e:.4g}']:.1f}s)")
    return ok


# ----------------------------------------------------------------------------- large eps
@dataclass(frozen=True)
class LargeEpsBudget:
    eps: float = 0.5  # PGD here should reach ~0 accuracy (a masking check); 0 = off
    steps: int = 20
    n: int | None = None  # images (None = the protocol's)

    def validate(self, where: str) -> None:
        check(0 <= self.eps <= 1, where, "eps", "a number in [0, 1]", self.eps)
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)
        _n(where, self.n)

    def enabled(self) -> bool:
        return self.eps > 0 and self.n != 0


@register_attack("large_eps", LargeEpsBudget, metrics=lambda b: ["large_eps", "large_eps_acc"], columns=lambda b: [])
def run_large_eps(ctx: EvalContext, b: LargeEpsBudget) -> None:
    """PGD at a large eps (step eps/4): an undefended or a robust model alike should reach ~0."""
    xs, ys = ctx.first(b.n)
    ctx.r["large_eps"] = b.eps
    ok = ctx.attack(f"pgd{b.steps}@{b.eps:g}", ctx.pgd(b.steps, eps=b.eps, step_size=b.eps / 4), xs, ys, eps=b.eps)
    ctx.r["large_eps_acc"] = _acc(ok)


# ----------------------------------------------------------------------------- targeted PGD
@dataclass(frozen=True)
class TargetedBudget:
    eps: tuple[float, ...] = ()  # budgets (ImageNet, Table 4); empty = off
    steps: int = 100

    def validate(self, where: str) -> None:
        check(all(0 < e <= 1 for e in self.eps), where, "eps", "numbers in (0, 1]", self.eps)
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)

    def enabled(self) -> bool:
        return bool(self.eps)


def _targeted_key(e: float) -> str:
    return f"pgd_targeted_acc_eps{e:g}"


@register_attack("targeted", TargetedBudget, metrics=lambda b: [_targeted_key(e) for e in b.eps],
                 columns=lambda b: [(f"targeted eps {e:g}", _targeted_key(e)) for e in b.eps],
                 smoke=lambda b: {"steps": min(b.steps, 20)})
def run_targeted(ctx: EvalContext, b: TargetedBudget) -> None:
    """Random-targeted PGD (each image towards a random other class) at each eps; step step_frac x eps."""
    g = torch.Generator().manual_seed(ctx.seed + 1)
    nc = ctx.bundle.num_classes
    targets = (ctx.y + torch.randint(1, nc, (ctx.n,), generator=g)) % nc  # a random class other than the true one
    bs = ctx.batch_size
    for e in b.eps:
        t0 = time.perf_counter()
        x_adv = torch.cat([pgd_linf(ctx.model, ctx.x[i:i + bs].to(ctx.device), ctx.y[i:i + bs].to(ctx.device), eps=e,
                                    steps=b.steps, step_size=ctx.step_frac * e, target=targets[i:i + bs].to(ctx.device),
                                    bn="eval", generator=ctx.gen).cpu() for i in range(0, ctx.n, bs)])
        ctx.extra["bound_violations"][f"targeted@{e:g}"] = violation(x_adv, ctx.x, e)
        ctx.r[_targeted_key(e)] = _acc(ctx.robust(x_adv, ctx.y))
        ctx.seconds[f"targeted@{e:g}"] = time.perf_counter() - t0
        ctx.say(f"  targeted pgd @ {e:g}: {ctx.r[_targeted_key(e)]:.4f} ({ctx.seconds[f'targeted@{e:g}']:.1f}s)")


# ----------------------------------------------------------------------------- derived views
# what every evaluation reports besides its attacks' keys (trainables.evaluate)
EVAL_KEYS = ("clean_acc", "n_eval", "eps", "zero_grad_frac", "robust_acc_min", "robust_acc_min_n", "max_bound_violation",
             "eval_time_s")


def metric_keys(protocol) -> list[str]:
    """Every numeric key an evaluation under ``protocol`` reports."""
    return [*EVAL_KEYS, *(k for name, b in protocol.attacks for k in ATTACKS.get(name).metrics(b))]


def worst_case_keys(protocol) -> list[str]:
    """Metric keys of the white-box L-inf attacks at the protocol's eps: the attacks whose
    per-image results make the worst case (``robust_acc_min``)."""
    return [k for name, b in protocol.attacks for k in ATTACKS.get(name).worst_case(b)]
