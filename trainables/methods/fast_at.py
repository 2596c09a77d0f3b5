"""Fast adversarial training (Wong et al. 2020): FGSM from a uniform random start with step
1.25 eps, clipped to the eps ball and [0, 1]; cyclic learning rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..attacks import bn_mode, fp32, input_grad, linf_project, linf_random_start, linf_step
from . import register_method
from .base import Method, check_budget


@dataclass(frozen=True)
class FastATConfig:
    eps: float | None = None  # None = the data set's budget
    step_frac: float = 1.25  # FGSM step as a fraction of eps (10/255 at 8/255)
    bn: Literal["train", "eval"] = "train"

    def validate(self, where: str) -> None:
        check_budget(where, self.eps, self.step_frac)


@register_method("fast_at")
class FastAT(Method):
    Config = FastATConfig
    # locuslab/fast_adversarial: torch's CyclicLR from 0 up to 0.2 and back over 15 epochs, peak at
    # half way (step_size_up = step_size_down), momentum cycled inversely 0.9 -> 0.8 at the peak
    # -> 0.9 (CyclicLR's defaults), wd 5e-4.
    default_optim = dict(
        lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="cyclic", milestones=(0.5,), momentum_cycle=(0.8, 0.9)
    )
    default_epochs = 15

    def train_step(self, x, y):
        c = self.cfg
        eps = self.budget_eps(c)
        x0 = linf_random_start(x, eps=eps, generator=self.generator)
        with bn_mode(self.net, c.bn), fp32(x):
            g = input_grad(self.net, x0, y)
        x_adv = linf_project(linf_step(x0, g, step_size=c.step_frac * eps), x, eps=eps).detach()
        return self.ce_update(x_adv, y, x_adv=x_adv)
