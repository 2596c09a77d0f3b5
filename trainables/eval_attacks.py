"""The evaluation's attacks as a registry: each entry has a name, a typed budget, a run function
that measures per image, a summary that turns the per-image results into metrics, and the
metric keys it writes. ``evaluate()`` runs a protocol's (attack, budget) list in the registry's
order; protocols, reports and summaries take names, columns and metric keys from here. Adding an
attack is one ``@register_attack`` entry (with its budget and summary) plus its test.

An evaluation can be cut into shards of consecutive images (``trainables.evaluate``): ``run``
sees one shard and records, per image, what its attack did (``Shard.per_image``), plus sums,
maxima and seconds; ``summarize`` sees the union of every shard and computes the metrics and the
masking checks' inputs from it, so that a sharded evaluation equals an unsharded one. Random
starts are drawn per batch from a generator seeded by (seed, attack, the batch's first image):
shards that start on a batch boundary draw what one evaluation would.

Every attack works in [0, 1] pixel space, in fp32, with BatchNorm in eval mode. The math lives
in ``trainables.attacks``; what is here decides budgets, images and what is recorded.
"""
from __future__ import annotations

import logging
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .attacks import bn_mode, brightness, contrast, cw_l2, grayscale, input_grad, pgd_linf, pgd_linf_best, rotate
from .data import DATASETS, DataBundle
from .devices import home
from .metrics import predict
from .registry import Registry
from .schema import check

Columns = list[tuple[str, str]]  # (table label, metric key)


@dataclass(frozen=True)
class Attack:
    name: str
    Budget: type  # frozen dataclass; ``enabled()`` says whether a budget runs the attack at all
    run: Callable[["EvalContext", Any], None]  # measures one shard, per image
    summarize: Callable[["Summary", Any], None]  # metrics from the union of the shards
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


def register_attack(name: str, Budget: type, *, summarize: Callable[["Summary", Any], None],
                    metrics: Callable[[Any], list[str]], columns: Callable[[Any], Columns] | None = None,
                    worst_case: Callable[[Any], list[str]] | None = None,
                    smoke: Callable[[Any], dict[str, Any]] | None = None):
    def deco(run: Callable[["EvalContext", Any], None]):
        cols = columns or (lambda b: [(name, k) for k in metrics(b) if k.endswith("_acc")])
        ATTACKS.register(name)(Attack(name, Budget, run, summarize, metrics, cols, worst_case or (lambda b: []),
                                      smoke or (lambda b: {}), (run.__doc__ or "").strip()))
        return run

    return deco


# ----------------------------------------------------------------------------- a shard's results
@dataclass
class Shard:
    """What one shard of an evaluation measured: per image (``per_image[name]`` covers the
    shard's images from its first, as far as that attack's images reach), and in sums, maxima
    and seconds. Plain data: it goes to JSON and back (``to_json``/``from_json``)."""

    start: int  # the protocol image index of the shard's first image
    n: int  # images in the shard
    per_image: dict[str, torch.Tensor] = field(default_factory=dict)  # bool or float, (m,) with m <= n
    counts: dict[str, float] = field(default_factory=dict)  # additive over shards
    maxima: dict[str, float] = field(default_factory=dict)  # bound violations: the largest over shards
    seconds: dict[str, float] = field(default_factory=dict)  # additive over shards
    notes: dict[str, list] = field(default_factory=dict)  # lists, concatenated over shards
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)  # kept AutoAttack inputs (not JSON)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "n": self.n, "counts": self.counts, "maxima": self.maxima,
                "seconds": self.seconds, "notes": self.notes,
                "per_image": {k: {"dtype": "bool" if v.dtype == torch.bool else "float", "values": v.tolist()}
                              for k, v in self.per_image.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Shard":
        per_image = {k: torch.tensor(v["values"], dtype=torch.bool if v["dtype"] == "bool" else torch.float64)
                     for k, v in d["per_image"].items()}
        return cls(int(d["start"]), int(d["n"]), per_image, dict(d["counts"]), dict(d["maxima"]),
                   dict(d["seconds"]), {k: list(v) for k, v in d["notes"].items()})


def union(shards: list[Shard]) -> Shard:
    """The shards of one evaluation joined in image order; they must tile its images."""
    shards = sorted(shards, key=lambda s: s.start)
    at = 0
    for s in shards:
        if s.start != at:
            raise ValueError(f"shards do not tile the images: one starts at {s.start}, expected {at}")
        at += s.n
    out = Shard(0, at)
    for name in dict.fromkeys(k for s in shards for k in s.per_image):
        parts, covered = [], 0
        for s in shards:  # an attack on the first m images: its values stop at the first shard that is short
            part = s.per_image.get(name)
            if part is None or covered < s.start:
                break
            parts.append(part)
            covered = s.start + len(part)
        out.per_image[name] = torch.cat(parts)
    for s in shards:
        for k, v in s.counts.items():
            out.counts[k] = out.counts.get(k, 0) + v
        for k, v in s.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + v
        for k, v in s.maxima.items():
            out.maxima[k] = max(out.maxima.get(k, 0.0), v)
        for k, v in s.notes.items():
            out.notes.setdefault(k, []).extend(v)
        for k, v in s.adversarial.items():
            out.adversarial[k] = torch.cat([out.adversarial[k], v]) if k in out.adversarial else v
    return out


# ----------------------------------------------------------------------------- measuring one shard
def stable_seed(*parts: Any) -> int:
    """A seed from values, the same in every process (Python's own hash of a str is not)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


@dataclass
class EvalContext:
    """What every attack reads while it measures one shard (model, the shard's images, budget,
    device) and where it writes (``shard``)."""

    model: nn.Module
    bundle: DataBundle | None
    x: torch.Tensor  # (n, C, H, W) the shard's images in [0, 1], CPU
    y: torch.Tensor
    eps: float
    step_frac: float
    batch_size: int
    device: torch.device
    seed: int
    say: Callable[[str], None]
    start: int = 0  # the protocol image index of x[0]
    transfer_source: nn.Module | None = None
    protocol: Any = None
    keep_adversarial: bool = False  # keep AutoAttack's adversarial inputs in the shard
    shard: Shard = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.shard is None:
            self.shard = Shard(self.start, len(self.y))

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def per_image(self) -> dict[str, torch.Tensor]:
        return self.shard.per_image

    def first(self, m: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The shard's images among the protocol's first ``m`` (an attack on a subset)."""
        k = self.n if m is None else max(0, min(m - self.start, self.n))
        return self.x[:k], self.y[:k]

    def generator(self, tag: str, first: int) -> torch.Generator:
        """The random stream of attack ``tag`` on the batch whose first image is ``first`` (a
        protocol image index): the same whichever shard the batch is in."""
        return torch.Generator(device=home(self.device)).manual_seed(stable_seed(self.seed, tag, first))

    def batched(self, tag: str, fn: Callable[..., torch.Tensor], xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``fn(xb, yb, generator) -> x_adv`` batch by batch on the device; CPU result."""
        out = []
        for i in range(0, len(xs), self.batch_size):
            gen = self.generator(tag, self.start + i)
            out.append(fn(xs[i:i + self.batch_size].to(self.device), ys[i:i + self.batch_size].to(self.device),
                          gen).detach().cpu())
        return torch.cat(out) if out else xs.clone()

    def correct_on(self, x_adv: torch.Tensor, ys: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        return predict(net or self.model, x_adv, batch_size=self.batch_size, device=self.device) == ys

    def robust(self, x_adv: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Per image: correct when clean AND on ``x_adv`` (an image the model gets wrong clean
        is never robust, whatever an attack's output does to it). ``ys`` are the first images."""
        return self.correct_on(x_adv, ys) & self.per_image["clean"][:len(ys)]

    def bound(self, name: str, x_adv: torch.Tensor, xs: torch.Tensor, eps: float) -> None:
        self.shard.maxima[f"bound/{name}"] = violation(x_adv, xs, eps)

    def attack(self, name: str, fn: Callable[..., torch.Tensor], xs=None, ys=None, eps: float | None = None) -> torch.Tensor:
        """Run ``fn`` batch by batch; record its bound violation, seconds and per-image robustness."""
        xs = self.x if xs is None else xs
        ys = self.y if ys is None else ys
        t0 = time.perf_counter()
        x_adv = self.batched(name, fn, xs, ys)
        self.bound(name, x_adv, xs, self.eps if eps is None else eps)
        ok = self.robust(x_adv, ys)
        self.per_image[name] = ok
        self.shard.seconds[name] = time.perf_counter() - t0
        if len(ok):
            self.say(f"  {name}: {_acc(ok):.4f} ({self.shard.seconds[name]:.1f}s)")
        return ok

    def pgd(self, steps: int, restarts: int = 1, *, loss: str = "ce", eps: float | None = None,
            net: nn.Module | None = None, step_size: float | None = None, kappa: float = float("inf"),
            last: bool = False):
        """PGD on ``net`` (this model by default): the first fooling iterate per image (or, with
        ``last``, each restart's last iterate, as a transfer attack crafts its inputs)."""
        eps = self.eps if eps is None else eps
        net = self.model if net is None else net
        step = self.step_frac * eps if step_size is None else step_size
        attack = pgd_linf if last else pgd_linf_best
        return lambda xb, yb, gen: attack(net, xb, yb, eps=eps, steps=steps, step_size=step, restarts=restarts,
                                          loss=loss, kappa=kappa, bn="eval", generator=gen)


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


# ----------------------------------------------------------------------------- the union's metrics
@dataclass
class Summary:
    """The union of an evaluation's shards as the summaries read it, and what they write: the
    metrics (``r``) and the masking checks' inputs that are not metrics (``extra``)."""

    shard: Shard  # the union
    eps: float
    dataset: str
    r: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_image(self) -> dict[str, torch.Tensor]:
        return self.shard.per_image

    @property
    def clean(self) -> torch.Tensor:
        return self.shard.per_image["clean"]

    def acc(self, name: str) -> float:
        return _acc(self.per_image[name])


# ----------------------------------------------------------------------------- FGSM
@dataclass(frozen=True)
class NoBudget:
    def enabled(self) -> bool:
        return True


def _summarize_fgsm(s: Summary, b: NoBudget) -> None:
    s.r["fgsm_acc"] = s.acc("fgsm")


@register_attack("fgsm", NoBudget, summarize=_summarize_fgsm, metrics=lambda b: ["fgsm_acc"],
                 columns=lambda b: [("FGSM", "fgsm_acc")], worst_case=lambda b: ["fgsm_acc"])
def run_fgsm(ctx: EvalContext, b: NoBudget) -> None:
    """One signed-gradient step of size eps from the clean input (the masking check's one-step attack)."""
    ctx.attack("fgsm", lambda xb, yb, gen: pgd_linf(ctx.model, xb, yb, eps=ctx.eps, steps=1, step_size=ctx.eps,
                                                    random_start=False, bn="eval"))


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


def _summarize_pgd(s: Summary, b: PGDBudget) -> None:
    runs = s.extra.setdefault("pgd_runs", {})
    for steps, restarts in b.runs:
        key = pgd_key(steps, restarts)
        s.r[f"{key}_acc"] = runs[(steps, restarts)] = s.acc(key)


@register_attack("pgd", PGDBudget, summarize=_summarize_pgd, metrics=_pgd_keys, worst_case=_pgd_keys,
                 columns=lambda b: [(pgd_label(s, r), f"{pgd_key(s, r)}_acc") for s, r in b.runs],
                 smoke=lambda b: {"runs": [list(x) for x in sorted({(min(s, 40), min(r, 2)) for s, r in b.runs})]})
def run_pgd(ctx: EvalContext, b: PGDBudget) -> None:
    """PGD-L-inf with a uniform random start in the eps ball, step step_frac x eps, per run of
    (steps, restarts); an image counts as broken if any restart breaks it."""
    for steps, restarts in b.runs:
        ctx.attack(pgd_key(steps, restarts), ctx.pgd(steps, restarts))


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


def _summarize_cw_linf(s: Summary, b: CWLinfBudget) -> None:
    s.r["cw_linf_acc"] = s.acc("cw_linf")


@register_attack("cw_linf", CWLinfBudget, summarize=_summarize_cw_linf, metrics=lambda b: ["cw_linf_acc"],
                 columns=lambda b: [("C&W-Linf", "cw_linf_acc")], worst_case=lambda b: ["cw_linf_acc"],
                 smoke=lambda b: {"steps": min(b.steps, 10)})
def run_cw_linf(ctx: EvalContext, b: CWLinfBudget) -> None:
    """PGD-L-inf on the C&W margin loss max_{j != y} z_j - z_y."""
    ctx.attack("cw_linf", ctx.pgd(b.steps, loss="cw", kappa=b.kappa))


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


def _summarize_cw_l2(s: Summary, b: CWL2Budget) -> None:
    norms = s.per_image["cw_l2_norm"]
    radius = b.radius if b.radius is not None else DATASETS.get(s.dataset).cw_l2_radius
    s.r["cw_l2_acc"] = _acc((norms > radius) & s.clean[:len(norms)])
    s.r["cw_l2_radius"] = radius
    s.r["cw_l2_n"] = len(norms)
    found = norms[torch.isfinite(norms) & (norms > 0)]
    s.r["cw_l2_median_norm"] = found.median().item() if len(found) else float("nan")


@register_attack("cw_l2", CWL2Budget, summarize=_summarize_cw_l2,
                 metrics=lambda b: ["cw_l2_acc", "cw_l2_radius", "cw_l2_n", "cw_l2_median_norm"],
                 columns=lambda b: [("C&W-L2", "cw_l2_acc")],
                 smoke=lambda b: {"n": 10, "iterations": min(b.iterations, 30), "search_steps": min(b.search_steps, 2)})
def run_cw_l2(ctx: EvalContext, b: CWL2Budget) -> None:
    """Carlini-Wagner L2 (minimal distance per image); robust at ``radius`` if none is found within it."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    norms = ctx.batched("cw_l2", lambda xb, yb, gen: cw_l2(ctx.model, xb, yb, search_steps=b.search_steps,
                                                          iterations=b.iterations, bn="eval")[:, None], xs, ys)
    ctx.per_image["cw_l2_norm"] = norms.squeeze(1).double() if len(ys) else torch.zeros(0, dtype=torch.float64)
    ctx.shard.seconds["cw_l2"] = time.perf_counter() - t0
    if len(ys):
        ctx.say(f"  cw_l2 (n={len(ys)}): {ctx.shard.seconds['cw_l2']:.1f}s")


# ----------------------------------------------------------------------------- transfer
@dataclass(frozen=True)
class TransferBudget:
    steps: int = 20  # PGD steps on the source model

    def validate(self, where: str) -> None:
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)

    def enabled(self) -> bool:
        return True


def _summarize_transfer(s: Summary, b: TransferBudget) -> None:
    if "transfer" not in s.per_image:
        s.r["transfer_skipped"] = "no source model given"
        return
    s.r["transfer_acc"] = s.acc("transfer")
    s.extra["transfer_white_box_acc"] = s.acc(pgd_key(b.steps, 1))


@register_attack("transfer", TransferBudget, summarize=_summarize_transfer, metrics=lambda b: ["transfer_acc"],
                 columns=lambda b: [("transfer", "transfer_acc")], smoke=lambda b: {"steps": min(b.steps, 20)})
def run_transfer(ctx: EvalContext, b: TransferBudget) -> None:
    """PGD crafted on a source model (a natural one by default), evaluated on this one."""
    if ctx.transfer_source is None:
        ctx.say("  transfer: skipped (no source model given)")
        return
    ctx.transfer_source.to(ctx.device)
    ctx.attack("transfer", ctx.pgd(b.steps, net=ctx.transfer_source, last=True))
    if pgd_key(b.steps, 1) not in ctx.per_image:  # the white-box attack of the same strength, to compare
        ctx.attack(pgd_key(b.steps, 1), ctx.pgd(b.steps))


# ----------------------------------------------------------------------------- invariance
@dataclass(frozen=True)
class InvarianceBudget:
    rotation_deg: float = 10.0  # the SPROUT paper's Table 5 transformations
    brightness: float = 1.5
    contrast: float = 2.0

    def enabled(self) -> bool:
        return True


INVARIANCE_KEYS = ["inv_rotation_acc", "inv_brightness_acc", "inv_contrast_acc", "inv_grayscale_acc"]


def _summarize_invariance(s: Summary, b: InvarianceBudget) -> None:
    for key in INVARIANCE_KEYS:
        s.r[key] = s.acc(key[:-4])


@register_attack("invariance", InvarianceBudget, summarize=_summarize_invariance, metrics=lambda b: list(INVARIANCE_KEYS),
                 columns=lambda b: [(k[4:-4], k) for k in INVARIANCE_KEYS])
def run_invariance(ctx: EvalContext, b: InvarianceBudget) -> None:
    """Accuracy under rotation, brightness, contrast and grayscale (no attack)."""
    t0 = time.perf_counter()
    for name, fn in (("rotation", lambda t: rotate(t, b.rotation_deg)), ("brightness", lambda t: brightness(t, b.brightness)),
                     ("contrast", lambda t: contrast(t, b.contrast)), ("grayscale", grayscale)):
        ctx.per_image[f"inv_{name}"] = ctx.correct_on(fn(ctx.x), ctx.y)
    ctx.shard.seconds["invariance"] = time.perf_counter() - t0
    ctx.say("  invariance: " + " ".join(f"{k[4:-4]} {_acc(ctx.per_image[k[:-4]]):.4f}" for k in INVARIANCE_KEYS)
            + f" ({ctx.shard.seconds['invariance']:.1f}s)")


# ----------------------------------------------------------------------------- AutoAttack
@dataclass(frozen=True)
class AutoAttackBudget:
    n: int | None = None  # images (None = the protocol's; 0 = off)

    def validate(self, where: str) -> None:
        _n(where, self.n)

    def enabled(self) -> bool:
        return self.n != 0


class _AALog(logging.Handler):
    """Collects AutoAttack's log: its per-attack robust accuracy, its warnings, every line."""

    pattern = re.compile(r"robust accuracy after ([A-Z\-]+): ([0-9.]+)%")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.steps: dict[str, float] = {}
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        self.lines.append(msg)
        m = self.pattern.search(msg)
        if m:
            self.steps[m.group(1).lower()] = float(m.group(2)) / 100
        elif record.levelno >= logging.WARNING:
            self.warnings.append(msg)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
               device: torch.device, batch_size: int, log: _AALog | None = None
               ) -> tuple[torch.Tensor, dict[str, float], list[str]]:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), from ``pyautoattack``.
    Returns adversarial inputs (CPU), robust accuracy after each attack, and its warnings."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler = log or _AALog()
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


AA_STEPS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _summarize_aa(s: Summary, b: AutoAttackBudget) -> None:
    ok = s.per_image["autoattack"]
    m = len(ok)
    s.r["autoattack_acc"] = _acc(ok)
    s.r["autoattack_n"] = m
    steps = {k: s.shard.counts[f"autoattack_after/{k}"] / m for k in AA_STEPS
             if f"autoattack_after/{k}" in s.shard.counts and m}
    for k, v in steps.items():
        s.r[f"autoattack_after_{k.replace('-', '_')}_acc"] = v
    if s.shard.notes.get("autoattack_warnings"):
        s.r["autoattack_warnings"] = sorted(set(s.shard.notes["autoattack_warnings"]))
    s.extra["autoattack_steps"] = steps
    s.extra["autoattack_n"] = m
    if "pgd20" in s.per_image:
        s.extra["autoattack_pgd20_acc"] = _acc(s.per_image["pgd20"][:m])


@register_attack("autoattack", AutoAttackBudget, summarize=_summarize_aa,
                 metrics=lambda b: ["autoattack_acc", "autoattack_n", "autoattack_after_apgd_ce_acc", "autoattack_after_apgd_t_acc",
                                    "autoattack_after_fab_t_acc", "autoattack_after_square_acc"],
                 columns=lambda b: [("AutoAttack", "autoattack_acc")], worst_case=lambda b: ["autoattack_acc"],
                 smoke=lambda b: {"n": 10})
def run_aa(ctx: EvalContext, b: AutoAttackBudget) -> None:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)."""
    xs, ys = ctx.first(b.n)
    t0 = time.perf_counter()
    log = _AALog()
    if len(ys):
        # its random draws follow its seed and the images' shape: a shard's own seed
        x_aa, steps, warnings = autoattack(ctx.model, xs, ys, eps=ctx.eps, seed=ctx.seed + ctx.start, device=ctx.device,
                                           batch_size=ctx.batch_size, log=log)
    else:
        x_aa, steps, warnings = xs.clone(), {}, []
    ctx.bound("autoattack", x_aa, xs, ctx.eps)
    ctx.per_image["autoattack"] = ctx.robust(x_aa, ys)
    for k, v in steps.items():  # AutoAttack logs percentages of the images it was given: counts add up
        ctx.shard.counts[f"autoattack_after/{k}"] = round(v * len(ys))
    ctx.shard.notes["autoattack_warnings"] = warnings
    ctx.shard.notes["autoattack_log"] = [f"[images {ctx.start}-{ctx.start + len(ys) - 1}] {line}" for line in log.lines]
    if ctx.keep_adversarial:
        ctx.shard.adversarial = {"x": x_aa, "y": ys.clone(), "index": torch.arange(ctx.start, ctx.start + len(ys))}
    ctx.shard.seconds["autoattack"] = time.perf_counter() - t0
    if len(ys):
        ctx.say(f"  autoattack (n={len(ys)}): {_acc(ctx.per_image['autoattack']):.4f} ({ctx.shard.seconds['autoattack']:.1f}s)")


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


def _curve_eps(ctx_eps: float, b: CurveBudget) -> list[float]:
    return [round(c * ctx_eps, 6) for c in b.multiples]


def _summarize_curve(s: Summary, b: CurveBudget) -> None:
    eps = _curve_eps(s.eps, b)
    s.r["curve_eps"] = eps
    s.r["curve_pgd_acc"] = [s.acc(f"curve_pgd@{e:.4g}") for e in eps]
    m = len(s.per_image[f"curve_pgd@{eps[0]:.4g}"]) if eps else 0
    s.extra["curve_n"] = m
    s.extra["curve_clean_acc"] = _acc(s.clean[:m])
    if "curve_eps0_changed" in s.per_image:
        s.extra["eps0_changed"] = int(s.per_image["curve_eps0_changed"].sum())
    if any(f"curve_aa@{e:.4g}" in s.per_image for e in eps):
        s.r["curve_autoattack_acc"] = [s.acc(f"curve_aa@{e:.4g}") for e in eps]


@register_attack("curve", CurveBudget, summarize=_summarize_curve,
                 metrics=lambda b: ["curve_eps", "curve_pgd_acc"] + (["curve_autoattack_acc"] if b.autoattack else []),
                 columns=lambda b: [], smoke=lambda b: _curve_smoke(b))
def run_curve(ctx: EvalContext, b: CurveBudget) -> None:
    """Accuracy against eps: PGD (and AutoAttack if asked) at each multiple of eps.

    PGD runs at every point independently (a curve that rises with eps is a masking sign).
    AutoAttack runs from the smallest eps up, each point on the images no smaller eps broke
    (an adversarial input within a smaller ball is one within the larger), and reuses the
    protocol's own AutoAttack run at the protocol's eps."""
    xs, ys = ctx.first(b.n)
    clean = ctx.per_image["clean"][:len(ys)]
    t0 = time.perf_counter()
    for e in _curve_eps(ctx.eps, b):
        name = f"curve_pgd@{e:.4g}"
        if e == 0:  # the whole attack pipeline with a zero budget: it must give back the clean input
            x0 = ctx.batched(name, ctx.pgd(b.pgd_steps, eps=0.0), xs, ys)
            ctx.bound(name, x0, xs, 0.0)
            at0 = ctx.correct_on(x0, ys)
            ctx.per_image["curve_eps0_changed"] = at0 != clean
            ctx.per_image[name] = at0 & clean
        elif e == ctx.eps and pgd_key(b.pgd_steps, 1) in ctx.per_image:
            ctx.per_image[name] = ctx.per_image[pgd_key(b.pgd_steps, 1)][:len(ys)]  # the same attack already ran
        else:
            ctx.attack(name, ctx.pgd(b.pgd_steps, eps=e), xs, ys, eps=e)
    if b.autoattack and ctx.protocol is not None and ctx.protocol.budget("autoattack") is not None:
        standing = clean.clone()  # robust at every smaller eps of the curve so far
        for e in sorted(set(_curve_eps(ctx.eps, b))):
            if e > 0:
                standing &= _aa_at(ctx, xs, ys, e, standing)
            ctx.per_image[f"curve_aa@{e:.4g}"] = standing.clone()
    ctx.shard.seconds["curve"] = time.perf_counter() - t0


def _aa_at(ctx: EvalContext, xs: torch.Tensor, ys: torch.Tensor, e: float, todo: torch.Tensor) -> torch.Tensor:
    """Per image of ``xs``: not broken by AutoAttack at ``e``, attacking only where ``todo``
    (elsewhere the answer is already False or known). The protocol's own AutoAttack run counts
    for the images it covered when ``e`` is the protocol's eps."""
    ok = torch.zeros(len(ys), dtype=torch.bool)
    todo = todo.clone()
    have = ctx.per_image.get("autoattack")
    if e == ctx.eps and have is not None:
        k = min(len(have), len(ys))
        ok[:k] = have[:k]
        todo[:k] = False
    idx = todo.nonzero().squeeze(1)
    if len(idx):
        t0 = time.perf_counter()
        x_aa, _, _ = autoattack(ctx.model, xs[idx], ys[idx], eps=e, seed=ctx.seed + ctx.start, device=ctx.device,
                                batch_size=ctx.batch_size)
        ctx.bound(f"curve_autoattack@{e:.4g}", x_aa, xs[idx], e)
        ok[idx] = ctx.correct_on(x_aa, ys[idx])
        ctx.shard.seconds[f"curve_autoattack@{e:.4g}"] = time.perf_counter() - t0
        ctx.say(f"  curve_autoattack@{e:.4g} (n={len(idx)}): {_acc(ok & ctx.per_image['clean'][:len(ys)]):.4f} "
                f"({ctx.shard.seconds[f'curve_autoattack@{e:.4g}']:.1f}s)")
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


def _summarize_large_eps(s: Summary, b: LargeEpsBudget) -> None:
    s.r["large_eps"] = b.eps
    s.r["large_eps_acc"] = s.acc("large_eps")


@register_attack("large_eps", LargeEpsBudget, summarize=_summarize_large_eps, metrics=lambda b: ["large_eps", "large_eps_acc"],
                 columns=lambda b: [])
def run_large_eps(ctx: EvalContext, b: LargeEpsBudget) -> None:
    """PGD at a large eps (step eps/4): an undefended or a robust model alike should reach ~0."""
    xs, ys = ctx.first(b.n)
    ctx.attack("large_eps", ctx.pgd(b.steps, eps=b.eps, step_size=b.eps / 4), xs, ys, eps=b.eps)


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


def _summarize_targeted(s: Summary, b: TargetedBudget) -> None:
    for e in b.eps:
        s.r[_targeted_key(e)] = s.acc(f"targeted@{e:g}")


def random_targets(y: torch.Tensor, start: int, num_classes: int, seed: int) -> torch.Tensor:
    """A random class other than the true one for each image, from its protocol index (the
    same target whichever shard the image is in)."""
    g = torch.Generator().manual_seed(seed + 1)
    offsets = torch.randint(1, num_classes, (start + len(y),), generator=g)[start:]
    return (y + offsets) % num_classes


@register_attack("targeted", TargetedBudget, summarize=_summarize_targeted,
                 metrics=lambda b: [_targeted_key(e) for e in b.eps],
                 columns=lambda b: [(f"targeted eps {e:g}", _targeted_key(e)) for e in b.eps],
                 smoke=lambda b: {"steps": min(b.steps, 20)})
def run_targeted(ctx: EvalContext, b: TargetedBudget) -> None:
    """Random-targeted PGD (each image towards a random other class) at each eps; step step_frac x eps."""
    targets = random_targets(ctx.y, ctx.start, ctx.bundle.num_classes, ctx.seed)
    for e in b.eps:
        name = f"targeted@{e:g}"
        t0 = time.perf_counter()
        x_adv = torch.cat([pgd_linf_best(ctx.model, ctx.x[i:i + ctx.batch_size].to(ctx.device),
                                         ctx.y[i:i + ctx.batch_size].to(ctx.device), eps=e, steps=b.steps,
                                         step_size=ctx.step_frac * e, target=targets[i:i + ctx.batch_size].to(ctx.device),
                                         bn="eval", generator=ctx.generator(name, ctx.start + i)).cpu()
                           for i in range(0, ctx.n, ctx.batch_size)]) if ctx.n else ctx.x.clone()
        ctx.bound(name, x_adv, ctx.x, e)
        ctx.per_image[name] = ctx.robust(x_adv, ctx.y)
        ctx.shard.seconds[name] = time.perf_counter() - t0
        ctx.say(f"  targeted pgd @ {e:g}: {_acc(ctx.per_image[name]):.4f} ({ctx.shard.seconds[name]:.1f}s)")


# ----------------------------------------------------------------------------- zero gradients
def zero_gradients(ctx: EvalContext) -> None:
    """Per image: whether its cross-entropy input gradient is exactly zero."""
    out = []
    with bn_mode(ctx.model, "eval"), torch.enable_grad():
        for i in range(0, ctx.n, ctx.batch_size):
            g = input_grad(ctx.model, ctx.x[i:i + ctx.batch_size].to(ctx.device), ctx.y[i:i + ctx.batch_size].to(ctx.device))
            out.append((g.flatten(1).abs().amax(1) == 0).cpu())
    ctx.per_image["zero_grad"] = torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


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
