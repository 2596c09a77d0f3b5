"""Named evaluation protocols: which attacks run with which budgets. The protocol's name and
every budget are recorded with each result (``protocol`` and ``protocol_budgets``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .config import build, check, to_dict
from .errors import ConfigError


@dataclass(frozen=True)
class Protocol:
    name: str = "custom"
    n: int | None = None  # test images (None = the whole test split)
    batch_size: int = 256
    eps: float | None = None  # L-inf budget; None = the data set's (8/255 CIFAR, 0.1 digits)
    step_frac: float = 0.25  # PGD step as a fraction of eps (the paper: 1/5)
    fgsm: bool = True  # the one-step attack that the masking check compares with
    pgd: tuple[tuple[int, int], ...] = ((20, 1),)  # (steps, restarts) -> pgd{steps}[x{restarts}]_acc
    cw_linf_steps: int = 0  # PGD on the C&W margin loss; 0 = off
    cw_l2_search_steps: int = 0  # binary-search steps over c; 0 = off
    cw_l2_iterations: int = 1000
    cw_l2_radius: float = 0.05  # report accuracy at this L2 radius (pixel units)
    cw_l2_n: int | None = None  # images for C&W-L2 (None = n)
    transfer: bool = False  # PGD crafted on a source model (a natural one by default)
    transfer_steps: int = 20
    invariance: bool = False  # rotation 10 deg, brightness x1.5, contrast x2, grayscale
    autoattack_n: int | None = 0  # images for AutoAttack standard; 0 = off, None = n
    curve: tuple[float, ...] = ()  # eps multiples for the accuracy-versus-eps curve (0 included)
    curve_n: int | None = None  # images for the curve (None = n)
    curve_autoattack: bool = False  # AutoAttack at every curve point too
    large_eps: float = 0.5  # PGD here should reach ~0 accuracy (masking check); 0 = off
    targeted_eps: tuple[float, ...] = ()  # random-targeted PGD budgets (ImageNet, Table 4)
    targeted_steps: int = 100
    checks: bool = True  # run the gradient-masking checks

    def validate(self, where: str) -> None:
        if self.n is not None:
            check(self.n >= 1, where, "n", "an integer >= 1 or null", self.n)
        check(self.step_frac > 0, where, "step_frac", "a number > 0", self.step_frac)
        check(all(s >= 1 and r >= 1 for s, r in self.pgd), where, "pgd", "pairs (steps >= 1, restarts >= 1)", self.pgd)
        if self.eps is not None:
            check(0 <= self.eps <= 1, where, "eps", "a number in [0, 1]", self.eps)

    def budgets(self) -> dict[str, Any]:
        return to_dict(self)


PROTOCOLS: dict[str, Protocol] = {
    # What `python -m trainables.train` reports: clean and PGD-20.
    "basic": Protocol(name="basic", pgd=((20, 1),), fgsm=False, large_eps=0.0),
    # Small and complete: every attack family, AutoAttack beside PGD, masking checks. Seconds
    # on digits; the smoke studies use it.
    "quick": Protocol(name="quick", n=200, pgd=((20, 1), (100, 3)), cw_linf_steps=30,
                      cw_l2_search_steps=3, cw_l2_iterations=100, cw_l2_n=50, transfer=True,
                      invariance=True, autoattack_n=100, curve=(0.0, 0.5, 1.0, 2.0, 4.0), curve_n=100),
    # The SPROUT paper's protocol (Tables 2, 3, 5): PGD-20/100/200 and 10x PGD-100 with step
    # eps/5, C&W-L-inf, C&W-L2 10x1000 at radius 0.05, transfer, invariance; plus AutoAttack.
    "paper": Protocol(name="paper", n=None, step_frac=0.2, pgd=((20, 1), (100, 1), (200, 1), (100, 10)),
                      cw_linf_steps=100, cw_l2_search_steps=10, cw_l2_iterations=1000, cw_l2_n=1000,
                      transfer=True, invariance=True, autoattack_n=None,
                      curve=(0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0), curve_n=1000),
    # RobustBench-style: AutoAttack standard on the full test split, PGD beside it.
    "standard": Protocol(name="standard", n=None, pgd=((20, 1), (100, 5)), autoattack_n=None,
                         curve=(0.0, 0.5, 1.0, 2.0), curve_n=1000, curve_autoattack=True),
    # ImageNet (Table 4): random-targeted PGD at eps 0.005 .. 0.02, AutoAttack on 1000 images.
    "imagenet": Protocol(name="imagenet", n=5000, batch_size=64, pgd=((20, 1),), autoattack_n=1000,
                         targeted_eps=(0.005, 0.01, 0.015, 0.02), targeted_steps=100, step_frac=0.2,
                         curve=(0.0, 0.5, 1.0, 2.0), curve_n=500, large_eps=0.25),
}


def get_protocol(name: str, overrides: Mapping[str, Any] | None = None) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[name]
    if not overrides:
        return base
    return build(Protocol, {**to_dict(base), **dict(overrides)}, f"protocol ({name})")


def smoke_overrides(p: Protocol) -> dict[str, Any]:
    """Budgets that keep every attack of ``p`` but run in seconds (smoke tests): 100 images,
    AutoAttack on 20, at most 40 PGD steps and 2 restarts, C&W-L2 2x30 on 10 images."""
    pgd = sorted({(min(s, 40), min(r, 2)) for s, r in p.pgd})
    return {"n": 100, "autoattack_n": 0 if p.autoattack_n == 0 else 20, "curve_n": 40, "cw_l2_n": 10,
            "cw_l2_iterations": min(p.cw_l2_iterations, 30), "cw_l2_search_steps": min(p.cw_l2_search_steps, 2),
            "cw_linf_steps": min(p.cw_linf_steps, 10), "targeted_steps": min(p.targeted_steps, 20),
            "pgd": [list(x) for x in pgd], "transfer_steps": min(p.transfer_steps, 20)}
