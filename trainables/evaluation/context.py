"""Measuring one shard: the context every attack's run reads (model, images, budgets, seeded
random draws per batch) and writes (per-image results, seconds, bound violations), and the
summary every attack's summarize writes metrics into."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attacks import bn_mode, input_grad, pgd_linf, pgd_linf_best
from ..data import DataBundle
from ..devices import home
from ..metrics import predict
from ..schema import check
from .shard import Shard


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
            out.append(
                fn(xs[i : i + self.batch_size].to(self.device), ys[i : i + self.batch_size].to(self.device), gen)
                .detach()
                .cpu()
            )
        return torch.cat(out) if out else xs.clone()

    def correct_on(self, x_adv: torch.Tensor, ys: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        return predict(net or self.model, x_adv, batch_size=self.batch_size, device=self.device) == ys

    def robust(self, x_adv: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Per image: correct when clean AND on ``x_adv`` (an image the model gets wrong clean
        is never robust, whatever an attack's output does to it). ``ys`` are the first images."""
        return self.correct_on(x_adv, ys) & self.per_image["clean"][: len(ys)]

    def bound(self, name: str, x_adv: torch.Tensor, xs: torch.Tensor, eps: float) -> None:
        self.shard.maxima[f"bound/{name}"] = violation(x_adv, xs, eps)

    def attack(
        self, name: str, fn: Callable[..., torch.Tensor], xs=None, ys=None, eps: float | None = None
    ) -> torch.Tensor:
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
            self.say(f"  {name}: {accuracy(ok):.4f} ({self.shard.seconds[name]:.1f}s)")
        return ok

    def pgd(
        self,
        steps: int,
        restarts: int = 1,
        *,
        loss: str = "ce",
        eps: float | None = None,
        net: nn.Module | None = None,
        step_size: float | None = None,
        kappa: float = float("inf"),
        last: bool = False,
    ):
        """PGD on ``net`` (this model by default): the first fooling iterate per image (or, with
        ``last``, each restart's last iterate, as a transfer attack crafts its inputs)."""
        eps = self.eps if eps is None else eps
        net = self.model if net is None else net
        step = self.step_frac * eps if step_size is None else step_size
        attack = pgd_linf if last else pgd_linf_best
        return lambda xb, yb, gen: attack(
            net,
            xb,
            yb,
            eps=eps,
            steps=steps,
            step_size=step,
            restarts=restarts,
            loss=loss,
            kappa=kappa,
            bn="eval",
            generator=gen,
        )


def violation(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    """How far adversarial inputs leave the eps ball or the [0, 1] box (0 when they do not)."""
    if not len(x):
        return 0.0
    ball = ((x_adv - x).abs() - eps).clamp(min=0).max().item()
    box = max((x_adv - 1).clamp(min=0).max().item(), (-x_adv).clamp(min=0).max().item())
    return max(ball, box)


def accuracy(ok: torch.Tensor) -> float:
    return ok.float().mean().item() if len(ok) else float("nan")


def check_n(where: str, n: int | None) -> None:
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
        return accuracy(self.per_image[name])


def zero_gradients(ctx: EvalContext) -> None:
    """Per image: whether its cross-entropy input gradient is exactly zero."""
    out = []
    with bn_mode(ctx.model, "eval"), torch.enable_grad():
        for i in range(0, ctx.n, ctx.batch_size):
            g = input_grad(
                ctx.model, ctx.x[i : i + ctx.batch_size].to(ctx.device), ctx.y[i : i + ctx.batch_size].to(ctx.device)
            )
            out.append((g.flatten(1).abs().amax(1) == 0).cpu())
    ctx.per_image["zero_grad"] = torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)
