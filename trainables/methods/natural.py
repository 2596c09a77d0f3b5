"""Natural training: cross entropy on clean inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..schema import check
from . import register_method
from .base import Method


@dataclass(frozen=True)
class NaturalConfig:
    label_smoothing: float = 0.0  # uniform label smoothing weight (0 = plain cross entropy)

    def validate(self, where: str) -> None:
        check(0.0 <= self.label_smoothing < 1.0, where, "label_smoothing", "a number in [0, 1)", self.label_smoothing)


@register_method("natural")
class Natural(Method):
    Config = NaturalConfig
    default_optim = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="piecewise", milestones=(0.5, 0.75))
    default_epochs = 100

    def train_step(self, x, y):
        self.model.train()
        with self.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.descend(loss)
        return {"loss": loss.detach(), "logits": logits.detach()}
