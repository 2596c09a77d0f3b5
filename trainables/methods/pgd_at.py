"""PGD adversarial training (Madry et al.): k-step PGD-L-inf from a random start, cross
entropy on the adversarial batch only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..attacks import pgd_linf
from ..schema import check
from . import register_method
from .base import Method, check_budget


@dataclass(frozen=True)
class PGDATConfig:
    eps: float | None = None  # L-inf budget, pixel units; None = the data set's (8/255 CIFAR)
    steps: int = 10  # PGD iterations (MadryLab: 7 or 10)
    step_frac: float = 0.25  # step size as a fraction of eps (2/255 at 8/255)
    random_start: bool = True
    bn: Literal["train", "eval"] = "train"  # BatchNorm mode while crafting (Madry: train)

    def validate(self, where: str) -> None:
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)
        check_budget(where, self.eps, self.step_frac)


@register_method("pgd_at")
class PGDAT(Method):
    Config = PGDATConfig
    default_optim = dict(lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="piecewise", milestones=(0.5, 0.75))
    default_epochs = 100

    def train_step(self, x, y):
        c = self.cfg
        eps = self.budget_eps(c)
        x_adv = pgd_linf(
            self.net,
            x,
            y,
            eps=eps,
            steps=c.steps,
            step_size=c.step_frac * eps,
            random_start=c.random_start,
            bn=c.bn,
            generator=self.generator,
        )
        return self.ce_update(x_adv, y, x_adv=x_adv)
