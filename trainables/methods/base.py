"""The method contract (after timm's ``task.py``): a small object that owns its training step
and its state. ``train_step(x, y)`` does the whole update (forward, backward, optimizer step,
and whatever else the method needs, such as SPROUT's beta ascent or Free-AT's replays) and
returns a dict with ``loss`` (detached scalar tensor), ``logits`` and named components for logging.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import generator
from ..schema import check


@dataclass(frozen=True)
class NoArgs:
    pass


def check_budget(where: str, eps: float | None, step_frac: float) -> None:
    """The attack budget fields shared by the adversarial methods' configs."""
    if eps is not None:
        check(0 <= eps <= 1, where, "eps", "a number in [0, 1]", eps)
    check(step_frac > 0, where, "step_frac", "a number > 0", step_frac)


class Method:
    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoArgs
    # Optimizer and schedule defaults from the method's reference code (each method's docstring names it);
    # milestones are fractions of the total number of epochs.
    default_optim: ClassVar[dict[str, Any]] = dict(
        lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="piecewise", milestones=(0.5, 0.75)
    )
    default_epochs: ClassVar[int] = 100
    # Under fast.amp=auto, train in bf16 on the GPU. False for a method that bf16 was measured
    # to cost more than 2 points of robust accuracy (bench/precision.py, README "Precision").
    bf16_default: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: Any,
        *,
        num_classes: int,
        eps: float,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        seed: int = 0,
    ):
        self.model = model  # possibly DDP-wrapped: use for the training forward/backward
        self.net = model.module if hasattr(model, "module") else model  # unwrapped: for attacks
        self.optimizer = optimizer
        self.cfg = cfg
        self.num_classes = num_classes
        self.eps = eps
        self.device = device
        self.amp_dtype = amp_dtype
        self.seed = seed
        self.generator = generator(device, seed + 12345)

    epoch_metric_names: tuple[str, ...] = ()  # the keys epoch_metrics() returns (studies may search on them)

    def epoch_metrics(self) -> dict[str, float]:
        """Method-specific figures reported after every epoch (SPROUT: beta's summary)."""
        return {}

    def final_metrics(self) -> dict[str, Any]:
        """Method-specific results reported once, with the trial's final result (SPROUT: beta at
        the start and at the end)."""
        return {}

    def budget_eps(self, cfg: Any) -> float:
        """The method's own training eps (``method_args.eps``) when it sets one, else the run's."""
        eps = getattr(cfg, "eps", None)
        return self.eps if eps is None else eps

    # -- hooks ----------------------------------------------------------------------------
    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers besides the model's whose learning rate follows the schedule."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for training forwards on the GPU fast path; a no-op otherwise."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def descend(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def ce_update(self, x_in: torch.Tensor, y: torch.Tensor, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
        """One descent step on cross entropy at ``x_in`` (clean or adversarial), train mode."""
        self.model.train()
        with self.autocast():
            logits = self.model(x_in)
            loss = F.cross_entropy(logits.float(), y)
        self.descend(loss)
        return {"loss": loss.detach(), "logits": logits.detach(), **extra}

    def trades_update(
        self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, beta: float
    ) -> dict[str, torch.Tensor]:
        """One descent step on TRADES' outer loss CE(f(x), y) + beta KL(f(x) || f(x_adv))."""
        self.model.train()
        with self.autocast():
            logits = self.model(x)
            logits_adv = self.model(x_adv)
        loss, ce, kl = trades_outer_loss(logits.float(), logits_adv.float(), y, beta)
        self.descend(loss)
        return {"loss": loss.detach(), "logits": logits.detach(), "ce": ce.detach(), "kl": kl.detach(), "x_adv": x_adv}

    def randn(self, shape: torch.Size) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.generator.device).to(self.device)

    def rand(self, shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device).to(self.device)


def trades_outer_loss(
    logits_nat: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CE(f(x), y) + beta * KL(f(x) || f(x')), the KL averaged over the batch (TRADES)."""
    ce = F.cross_entropy(logits_nat, y)
    kl = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_nat, dim=1), reduction="batchmean")
    return ce + beta * kl, ce, kl
