"""Free adversarial training (Shafahi et al. 2019): each minibatch is replayed m times; every
replay is one forward/backward that updates theta and takes an FGSM step (size eps) on a
perturbation that persists across minibatches. Divide the epoch budget by m."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..schema import check
from . import register_method
from .base import Method, check_budget


@dataclass(frozen=True)
class FreeATConfig:
    replays: int = 8  # m
    eps: float | None = None  # None = the data set's budget
    step_frac: float = 1.0  # FGSM step as a fraction of eps

    def validate(self, where: str) -> None:
        check(self.replays >= 1, where, "replays", "an integer >= 1", self.replays)
        check_budget(where, self.eps, self.step_frac)


@register_method("free_at")
class FreeAT(Method):
    Config = FreeATConfig
    default_optim = dict(lr=0.1, momentum=0.9, weight_decay=2e-4, schedule="piecewise", milestones=(0.5, 0.75))
    default_epochs = 25  # 200 / m with m = 8

    def __init__(self, model, optimizer, cfg, **kw):
        super().__init__(model, optimizer, cfg, **kw)
        self.delta: torch.Tensor | None = None  # persists across minibatches
        self.replays_done = 0

    def state_dict(self):
        return {"delta": None if self.delta is None else self.delta.cpu(), "replays_done": self.replays_done}

    def load_state_dict(self, state):
        d = state.get("delta")
        self.delta = None if d is None else d.to(self.device)
        self.replays_done = int(state.get("replays_done", 0))

    def train_step(self, x, y):
        c = self.cfg
        eps = self.budget_eps(c)
        if self.delta is None or self.delta.shape != x.shape:
            # first batch, or a batch of another size (the last one): keep what overlaps
            fresh = torch.zeros_like(x)
            if self.delta is not None and self.delta.shape[1:] == x.shape[1:]:
                n = min(len(x), len(self.delta))
                fresh[:n] = self.delta[:n]
            self.delta = fresh
        self.model.train()
        for _ in range(c.replays):
            delta = self.delta.detach().requires_grad_(True)
            x_adv = (x + delta).clamp(0.0, 1.0)
            with self.autocast():
                logits = self.model(x_adv)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # fills theta.grad and delta.grad in the same pass
            self.optimizer.step()
            self.delta = (delta.detach() + c.step_frac * eps * delta.grad.sign()).clamp(-eps, eps)
            self.replays_done += 1
        return {"loss": loss.detach(), "logits": logits.detach(), "x_adv": x_adv.detach()}
