"""Backward Smoothing (Chen et al., "Efficient Robust Training via Backward Smoothing", AAAI 2022): an initialization found in output space, then
one TRADES ascent step, then the TRADES outer loss.

1. psi ~ U(-1, 1) in logit space; xi* = one signed step (size eps) from x + 0.001 N(0, 1) that
   *minimizes* KL(softmax(f(x) + gamma psi) || softmax(f(x + xi))), projected to the eps ball.
2. delta* = one signed ascent step (size eps) on KL(softmax(f(x)) || softmax(f(x'))) from x + xi*.
3. theta descends CE(f(x), y) + beta * KL(f(x) || f(x + xi* + delta*)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..attacks import bn_mode, fp32, linf_project, linf_step, trades_inner
from ..schema import check
from . import register_method
from .base import Method, check_budget


@dataclass(frozen=True)
class BackwardSmoothingConfig:
    beta: float = 10.0  # TRADES KL weight (README example)
    gamma: float = 1.0  # scale of the output-space noise psi
    eps: float | None = None  # None = the data set's budget
    step_frac: float = 1.0  # both steps have size step_frac * eps
    bn: Literal["train", "eval"] = "eval"

    def validate(self, where: str) -> None:
        check(self.beta >= 0, where, "beta", "a number >= 0", self.beta)
        check(self.gamma >= 0, where, "gamma", "a number >= 0", self.gamma)
        check_budget(where, self.eps, self.step_frac)


@register_method("backward_smoothing")
class BackwardSmoothing(Method):
    Config = BackwardSmoothingConfig
    # jinghuichen/BackwardSmoothing train_trades_backward.py: SGD 0.1, momentum 0.9, wd 5e-4, /10 at 50 % and 75 %
    default_optim = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="piecewise", milestones=(0.5, 0.75))
    default_epochs = 100

    def smoothing_init(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        c = self.cfg
        with bn_mode(self.net, c.bn), fp32(x):
            with torch.no_grad():
                logits = self.net(x)
                psi = self.rand(logits.shape) * 2 - 1
                target = F.softmax(logits + c.gamma * psi, dim=1)
            x0 = linf_project(x + 0.001 * self.randn(x.shape), x, eps=eps).requires_grad_(True)
            kl = F.kl_div(F.log_softmax(self.net(x0), dim=1), target, reduction="sum")
            (g,) = torch.autograd.grad(kl, x0)
        # descend the KL: step against the gradient
        return linf_project(linf_step(x0.detach(), -g, step_size=c.step_frac * eps), x, eps=eps)

    def train_step(self, x, y):
        c = self.cfg
        eps = self.budget_eps(c)
        start = self.smoothing_init(x, eps)
        x_adv = trades_inner(self.net, x, eps=eps, steps=1, step_size=c.step_frac * eps, start=start, bn=c.bn)
        return self.trades_update(x, x_adv, y, c.beta)
