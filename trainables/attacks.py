"""Attacks in [0, 1] pixel space with keyword-only budgets.

The L-inf geometry (random start, signed step, projection) is in small named pieces shared by
training (PGD-AT, TRADES, Fast-AT, Backward Smoothing) and evaluation. Which BatchNorm mode an
attack runs in is explicit (``bn=``) and restored afterwards: the reference codes disagree on
it and it changes results. Attacks always run in fp32 (autocast off).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BNMode = Literal["train", "eval", "keep"]


@contextlib.contextmanager
def bn_mode(model: nn.Module, mode: BNMode) -> Iterator[nn.Module]:
    """Put ``model`` in train or eval mode for the block; restore every submodule's flag after."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def fp32(x: torch.Tensor) -> Iterator[None]:
    """Attacks run in fp32 even inside a bf16 training step."""
    with torch.autocast(device_type=x.device.type, enabled=False), torch.enable_grad():
        yield


# ----------------------------------------------------------------------------- L-inf geometry
def linf_random_start(x: torch.Tensor, *, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the eps ball around x, clipped to [0, 1]."""
    u = torch.rand(x.shape, generator=generator, device=generator.device if generator else x.device)
    delta = (u.to(x.device) * 2 - 1) * eps
    return (x + delta).clamp(0.0, 1.0)


def linf_step(x_adv: torch.Tensor, grad: torch.Tensor, *, step_size: float) -> torch.Tensor:
    """One signed-gradient ascent step (the steepest ascent direction for L-inf)."""
    return x_adv + step_size * grad.sign()


def linf_project(x_adv: torch.Tensor, x: torch.Tensor, *, eps: float) -> torch.Tensor:
    """Project onto the eps ball around x intersected with the [0, 1] box."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- losses
def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = math.inf) -> torch.Tensor:
    """Per-sample C&W margin max_{j != y} z_j - z_y (ascent fools), capped above at ``kappa``
    (Madry's C&W loss): once an image is fooled by kappa there is nothing left to gain. The cap
    is on the success side; a floor on the other side would zero the gradient of every
    confidently classified image, which would then never be attacked."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - true).clamp(max=kappa)


def _attack_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: str, target: torch.Tensor | None, kappa: float = math.inf
) -> torch.Tensor:
    if target is not None:  # targeted: descend CE towards the target == ascend its negative
        return -F.cross_entropy(logits, target, reduction="sum")
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if loss == "cw":
        return cw_margin(logits, y, kappa=kappa).sum()
    raise ValueError(f"unknown attack loss {loss!r}")


def input_grad(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    kappa: float = math.inf,
) -> torch.Tensor:
    """d loss / d x without touching parameter gradients (``kappa``: the C&W loss's cap)."""
    x = x.detach().requires_grad_(True)
    value = _attack_loss(model(x), y, loss, target, kappa)
    (g,) = torch.autograd.grad(value, x)
    return g


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    bn: BNMode = "eval",
    generator: torch.Generator | None = None,
    kappa: float = math.inf,
) -> torch.Tensor:
    """PGD-L-inf as training uses it (the reference codes' attack): each restart's last iterate;
    over ``restarts`` an input that any restart fools (or, targeted, sends to ``target``) is
    kept. ``steps=1, step_size=eps, random_start=False`` is FGSM."""
    x = x.detach()
    best = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with bn_mode(model, bn), fp32(x):
        for _ in range(max(1, restarts)):
            x_adv = linf_random_start(x, eps=eps, generator=generator) if random_start else x.clone()
            for _ in range(steps):
                x_req = x_adv.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(_attack_loss(model(x_req), y, loss, target, kappa), x_req)
                x_adv = linf_project(linf_step(x_adv, g, step_size=step_size), x, eps=eps).detach()
            with torch.no_grad():
                success = _fooled(model(x_adv), y, target)
            take = ~done  # not fooled by an earlier restart: keep this restart's result
            best[take] = x_adv[take]
            done |= success
    return best


def _fooled(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    pred = logits.argmax(1)
    return (pred == target) if target is not None else (pred != y)


def pgd_linf_best(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    target: torch.Tensor | None = None,
    bn: BNMode = "eval",
    generator: torch.Generator | None = None,
    kappa: float = math.inf,
) -> torch.Tensor:
    """PGD-L-inf as evaluation uses it: per input, the first iterate of any step or restart that
    fools the model (the last iterate may have stepped back out).

    An input leaves the attack at its first fooling iterate: later steps and restarts run on the
    inputs still standing (as AutoAttack's APGD does). The result is the same as attacking every
    input to the end (``pgd_linf_to_the_end``: inputs are attacked independently, BatchNorm in
    eval mode, a summed loss, the random starts drawn for the whole batch), at the cost of the
    inputs that are still standing: a non-robust model is broken in a few steps."""
    x = x.detach()
    best = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with bn_mode(model, bn), fp32(x):
        for _ in range(max(1, restarts)):
            start = linf_random_start(x, eps=eps, generator=generator) if random_start else x.clone()
            idx = (~done).nonzero().squeeze(1)  # the inputs no earlier restart fooled
            x_adv, x0, y0 = start[idx], x[idx], y[idx]
            t0 = target[idx] if target is not None else None
            for _ in range(steps):
                if not len(idx):
                    break
                x_req = x_adv.detach().requires_grad_(True)
                logits = model(x_req)
                (g,) = torch.autograd.grad(_attack_loss(logits, y0, loss, t0, kappa), x_req)
                new = _fooled(logits.detach(), y0, t0)  # this iterate fools: keep it, stop attacking it
                if new.any():
                    best[idx[new]] = x_adv[new]
                    done[idx[new]] = True
                    stay = ~new
                    idx, x_adv, x0, y0, g = idx[stay], x_adv[stay], x0[stay], y0[stay], g[stay]
                    t0 = t0[stay] if t0 is not None else None
                x_adv = linf_project(linf_step(x_adv, g, step_size=step_size), x0, eps=eps).detach()
            if len(idx):
                with torch.no_grad():
                    success = _fooled(model(x_adv), y0, t0)
                best[idx] = x_adv  # still standing: this restart's last iterate
                done[idx] |= success
    return best


def pgd_linf_to_the_end(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    loss: str = "ce",
    kappa: float = math.inf,
) -> torch.Tensor:
    """``pgd_linf_best`` as it ran before the early exit: every input, every step, every
    restart. The reference the early exit must reproduce (tests) and the cost it saves (bench)."""
    x = x.detach()
    best, done = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    with bn_mode(model, "eval"), fp32(x):
        for _ in range(max(1, restarts)):
            x_adv = linf_random_start(x, eps=eps, generator=generator)
            for _ in range(steps):
                x_req = x_adv.detach().requires_grad_(True)
                logits = model(x_req)
                new = (logits.detach().argmax(1) != y) & ~done
                best[new] = x_adv[new]
                done |= new
                (g,) = torch.autograd.grad(_attack_loss(logits, y, loss, None, kappa), x_req)
                x_adv = linf_project(linf_step(x_adv, g, step_size=step_size), x, eps=eps).detach()
            with torch.no_grad():
                success = model(x_adv).argmax(1) != y
            best[~done] = x_adv[~done]
            done |= success
    return best


def trades_inner(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    start: torch.Tensor | None = None,
    bn: BNMode = "eval",
    generator: torch.Generator | None = None,
    init_std: float = 0.001,
) -> torch.Tensor:
    """TRADES' inner maximization of KL(f(x) || f(x')) from x + init_std * N(0, 1) (or ``start``)."""
    x = x.detach()
    with bn_mode(model, bn), fp32(x):
        with torch.no_grad():
            p_nat = F.softmax(model(x), dim=1)
        if start is None:
            noise = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device).to(
                x.device
            )
            start = x + init_std * noise
        x_adv = linf_project(start.detach(), x, eps=eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_nat, reduction="sum")
            (g,) = torch.autograd.grad(kl, x_adv)
            x_adv = linf_project(linf_step(x_adv.detach(), g, step_size=step_size), x, eps=eps).detach()
    return x_adv


# ----------------------------------------------------------------------------- C&W L2
def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    search_steps: int = 10,
    iterations: int = 1000,
    lr: float = 0.01,
    initial_const: float = 1e-3,
    kappa: float = 0.0,
    abort_early: bool = True,
    bn: BNMode = "eval",
) -> torch.Tensor:
    """Carlini & Wagner L2 (tanh box, Adam, binary search over the constant c per sample).

    Returns the L2 norm of the smallest successful perturbation found per sample (``inf``
    where none was found; 0 where the clean input is already misclassified)."""
    x = x.detach()
    n = len(x)
    dims = tuple(range(1, x.dim()))
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), 1e10, device=x.device)
    const = torch.full((n,), initial_const, device=x.device)
    best_l2 = torch.full((n,), math.inf, device=x.device)
    w0 = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
    with bn_mode(model, bn), fp32(x):
        with torch.no_grad():
            best_l2[model(x).argmax(1) != y] = 0.0
        for _ in range(search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = math.inf
            for it in range(iterations):
                x_adv = (torch.tanh(w) + 1) / 2
                logits = model(x_adv)
                l2sq = (x_adv - x).pow(2).sum(dims)
                margin = logits.gather(1, y[:, None]).squeeze(1) - logits.masked_fill(
                    F.one_hot(y, logits.shape[1]).bool(), float("-inf")
                ).amax(1)
                f = margin.clamp(min=-kappa)
                loss = (l2sq + const * f).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    ok = margin < -kappa if kappa > 0 else margin < 0
                    l2 = l2sq.sqrt()
                    better = ok & (l2 < best_l2)
                    best_l2[better] = l2[better]
                    succeeded |= ok
                if abort_early and it % max(1, iterations // 10) == 0:
                    if loss.item() > prev * 0.9999:
                        break
                    prev = loss.item()
            # binary search on c: smaller after a success, larger after a failure
            upper = torch.where(succeeded, torch.min(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.max(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
    return best_l2


# ----------------------------------------------------------------------------- invariance
def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    import torchvision.transforms.functional as TF

    return TF.rotate(x, degrees)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return (x * factor).clamp(0.0, 1.0)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the per-image mean grey level (torchvision's adjust_contrast)."""
    grey = (
        x.mean(dim=1, keepdim=True) if x.shape[1] == 1 else (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    )
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp(0.0, 1.0)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """The mean of the RGB channels, repeated on every channel (the paper's Table 5)."""
    return x.mean(dim=1, keepdim=True).expand_as(x).contiguous()
