"""Random-targeted PGD at several eps (the ImageNet protocol)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...attacks import pgd_linf_best
from ...schema import check
from ..context import EvalContext, Summary, accuracy
from ..registry import register_attack


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


@register_attack(
    "targeted",
    TargetedBudget,
    summarize=_summarize_targeted,
    metrics=lambda b: [_targeted_key(e) for e in b.eps],
    columns=lambda b: [(f"targeted eps {e:g}", _targeted_key(e)) for e in b.eps],
    smoke=lambda b: {"steps": min(b.steps, 20)},
)
def run_targeted(ctx: EvalContext, b: TargetedBudget) -> None:
    """Random-targeted PGD (each image towards a random other class) at each eps; step step_frac x eps."""
    targets = random_targets(ctx.y, ctx.start, ctx.bundle.num_classes, ctx.seed)
    for e in b.eps:
        name = f"targeted@{e:g}"
        t0 = time.perf_counter()
        x_adv = (
            torch.cat(
                [
                    pgd_linf_best(
                        ctx.model,
                        ctx.x[i : i + ctx.batch_size].to(ctx.device),
                        ctx.y[i : i + ctx.batch_size].to(ctx.device),
                        eps=e,
                        steps=b.steps,
                        step_size=ctx.step_frac * e,
                        target=targets[i : i + ctx.batch_size].to(ctx.device),
                        bn="eval",
                        generator=ctx.generator(name, ctx.start + i),
                    ).cpu()
                    for i in range(0, ctx.n, ctx.batch_size)
                ]
            )
            if ctx.n
            else ctx.x.clone()
        )
        ctx.bound(name, x_adv, ctx.x, e)
        ctx.per_image[name] = ctx.robust(x_adv, ctx.y)
        ctx.shard.seconds[name] = time.perf_counter() - t0
        ctx.say(f"  targeted pgd @ {e:g}: {accuracy(ctx.per_image[name]):.4f} ({ctx.shard.seconds[name]:.1f}s)")
