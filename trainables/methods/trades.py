"""TRADES (Zhang et al. 2019): inner maximization of KL(f(x) || f(x')) with the model in eval
mode from x + 0.001 N(0, 1); outer loss CE(f(x), y) + beta * KL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..attacks import trades_inner
from ..schema import check
from . import register_method
from .base import Method, check_budget


@dataclass(frozen=True)
class TradesConfig:
    beta: float = 6.0  # weight of the KL term
    eps: float | None = None  # None = the data set's budget (TRADES: 0.031)
    steps: int = 10
    step_frac: float = 0.007 / 0.031  # step 0.007 at eps 0.031
    bn: Literal["train", "eval"] = "eval"  # TRADES crafts in eval mode

    def validate(self, where: str) -> None:
        check(self.beta >= 0, where, "beta", "a number >= 0", self.beta)
        check(self.steps >= 1, where, "steps", "an integer >= 1", self.steps)
        check_budget(where, self.eps, self.step_frac)


@register_method("trades")
class Trades(Method):
    Config = TradesConfig
    # TRADES: SGD 0.1, wd 2e-4, 76 epochs, lr / 10 at epoch 75.
    # yaodongyu/TRADES train_trades_cifar10.py: adjust_learning_rate sets lr/10 from epoch 75 of
    # 1..76, i.e. for the last two epochs (0-based 74 and 75): the drop is at 74/76 of training.
    default_optim = dict(lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="piecewise", milestones=(74 / 76,))
    default_epochs = 76

    def train_step(self, x, y):
        c = self.cfg
        eps = self.budget_eps(c)
        x_adv = trades_inner(
            self.net, x, eps=eps, steps=c.steps, step_size=c.step_frac * eps, bn=c.bn, generator=self.generator
        )
        return self.trades_update(x, x_adv, y, c.beta)
