"""Named evaluation protocols: a list of (attack, typed budget) plus the images they run on.

A protocol's shared fields (images, batch, eps, PGD step) apply to every attack; each attack's
own budget is a frozen dataclass declared with the attack (``trainables.eval_attacks``). The
protocol's name and every budget are recorded with each result (``protocol``,
``protocol_budgets``).

Overrides (study files' ``evaluation.overrides``, ``trainables.evaluate --set``) name a shared
field (``n: 1000``), an attack's field (``autoattack.n: 500`` or ``{autoattack: {n: 500}}``), or
an attack with ``true`` / ``false`` (add it with its default budget, or remove it). A budget that
turns its attack off (``autoattack.n: 0``, ``cw_linf.steps: 0``, an empty curve) removes the
attack; naming a field of an attack the protocol lacks adds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError
from ..schema import build, check, to_dict
from .attacks import ATTACKS, attack_order


@dataclass(frozen=True)
class Protocol:
    name: str = "custom"
    n: int | None = None  # test images (None = the whole test split)
    batch_size: int = 256
    eps: float | None = None  # L-inf budget; None = the data set's (8/255 CIFAR, 0.1 digits)
    step_frac: float = 0.25  # PGD step as a fraction of eps (the paper: 1/5)
    checks: bool = True  # run the gradient-masking checks
    attacks: tuple[tuple[str, Any], ...] = ()  # (attack name, its budget), in the registry's order

    def validate(self, where: str) -> None:
        if self.n is not None:
            check(self.n >= 1, where, "n", "an integer >= 1 or null", self.n)
        check(self.batch_size >= 1, where, "batch_size", "an integer >= 1", self.batch_size)
        check(self.step_frac > 0, where, "step_frac", "a number > 0", self.step_frac)
        if self.eps is not None:
            check(0 <= self.eps <= 1, where, "eps", "a number in [0, 1]", self.eps)

    def budget(self, attack: str) -> Any | None:
        """The budget of ``attack`` in this protocol, or None when it does not run."""
        return dict(self.attacks).get(attack)

    def budgets(self) -> dict[str, Any]:
        """What is recorded with every result: the shared fields and each attack's budget."""
        out = {k: getattr(self, k) for k in ("n", "batch_size", "eps", "step_frac", "checks")}
        out.update({name: to_dict(b) for name, b in self.attacks})
        return out


SHARED = ("n", "batch_size", "eps", "step_frac", "checks")


def make(name: str, *, attacks: Mapping[str, Mapping[str, Any]], **shared: Any) -> Protocol:
    """A protocol from plain data: shared fields and ``{attack: {budget fields}}``."""
    return _assemble(Protocol(name=name), shared, {a: dict(f) for a, f in attacks.items()}, f"protocol ({name})")


def _assemble(
    base: Protocol, shared: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]], where: str
) -> Protocol:
    budgets: dict[str, Any] = dict(base.attacks)
    for attack, values in fields.items():
        entry = ATTACKS.get(attack)  # an unknown attack is one clear error naming the known ones
        current = to_dict(budgets[attack]) if attack in budgets else {}
        budgets[attack] = build(entry.Budget, {**current, **values}, f"{where}.{attack}")
    kept = tuple((a, budgets[a]) for a in attack_order() if a in budgets and budgets[a].enabled())
    try:
        return build(Protocol, {**{k: getattr(base, k) for k in ("name", *SHARED)}, **shared, "attacks": kept}, where)
    except TypeError as e:  # a shared value of the wrong shape
        raise ConfigError(f"{where}: {e}") from None


def _split(overrides: Mapping[str, Any]) -> tuple[dict, dict, set]:
    shared: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {}
    off: set[str] = set()
    for key, value in overrides.items():
        if key in SHARED:
            shared[key] = value
        elif key in ATTACKS and isinstance(value, (Mapping, bool)):  # {attack: {field: value}} or on/off
            if value is False:
                off.add(key)
            else:
                fields.setdefault(key, {}).update(value if isinstance(value, Mapping) else {})
        elif "." in key:
            attack, field = key.split(".", 1)
            fields.setdefault(attack, {})[field] = value
        else:
            raise ConfigError(
                f"unknown key {key!r}; expected a shared field ({', '.join(SHARED)}), "
                f"an attack ({', '.join(ATTACKS.names())}) or ATTACK.FIELD"
            )
    return shared, fields, off


def with_overrides(protocol: Protocol, overrides: Mapping[str, Any] | None) -> Protocol:
    if not overrides:
        return protocol
    where = f"protocol ({protocol.name})"
    try:
        shared, fields, off = _split(overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    base = replace(protocol, attacks=tuple((a, b) for a, b in protocol.attacks if a not in off))
    return _assemble(base, shared, fields, where)


PROTOCOLS: dict[str, Protocol] = {
    # What `python -m trainables.train` reports: clean and PGD-20.
    "basic": make("basic", attacks={"pgd": {"runs": [[20, 1]]}}),
    # The screening evaluation on the validation split that a search selects on (seconds, no
    # AutoAttack): clean, FGSM, PGD-20, a PGD eps curve, and the masking checks they feed
    # (eps 0 against clean, monotone in eps, one step against many, zero gradients, bounds).
    "screen": make(
        "screen", n=1000, attacks={"fgsm": {}, "pgd": {"runs": [[20, 1]]}, "curve": {"multiples": [0.0, 0.5, 1.0, 2.0]}}
    ),
    # Small and complete: every attack family, AutoAttack beside PGD, masking checks. Seconds
    # on digits; the smoke studies use it.
    "quick": make(
        "quick",
        n=200,
        attacks={
            "fgsm": {},
            "pgd": {"runs": [[20, 1], [100, 3]]},
            "cw_linf": {"steps": 30},
            "cw_l2": {"search_steps": 3, "iterations": 100, "n": 50},
            "transfer": {},
            "invariance": {},
            "autoattack": {"n": 100},
            "curve": {"multiples": [0.0, 0.5, 1.0, 2.0, 4.0], "n": 100},
            "large_eps": {"n": 100},
        },
    ),
    # The SPROUT paper's protocol (Tables 2, 3, 5): PGD-20/100/200 and 10x PGD-100 with step
    # eps/5, C&W-L-inf, C&W-L2 10x1000 at radius 0.05, transfer, invariance; plus AutoAttack.
    "paper": make(
        "paper",
        step_frac=0.2,
        attacks={
            "fgsm": {},
            "pgd": {"runs": [[20, 1], [100, 1], [200, 1], [100, 10]]},
            "cw_linf": {"steps": 100},
            "cw_l2": {"search_steps": 10, "iterations": 1000, "n": 1000},
            "transfer": {},
            "invariance": {},
            "autoattack": {"n": None},
            "curve": {"multiples": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0], "n": 1000},
            "large_eps": {"n": 1000},
        },
    ),
    # RobustBench-style: AutoAttack standard on the full test split, PGD beside it.
    "standard": make(
        "standard",
        attacks={
            "fgsm": {},
            "pgd": {"runs": [[20, 1], [100, 5]]},
            "autoattack": {"n": None},
            "curve": {"multiples": [0.0, 0.5, 1.0, 2.0], "n": 1000, "autoattack": True},
            "large_eps": {"n": 1000},
        },
    ),
    # The paper's attack-strength experiments on trained models (step eps/5 throughout):
    # Table 9, PGD-20 with 1 to 10 random restarts, and PGD-100 with 10 (its text);
    "restarts": make(
        "restarts",
        step_frac=0.2,
        checks=False,
        attacks={"pgd": {"runs": [[20, r] for r in (1, 3, 5, 8, 10)] + [[100, 10]]}},
    ),
    # Figure 7, PGD with 10 to 500 steps;
    "steps": make(
        "steps", step_frac=0.2, checks=False, attacks={"pgd": {"runs": [[s, 1] for s in (10, 20, 50, 100, 200, 500)]}}
    ),
    # Figure 6, C&W-L-inf (and PGD-20) against eps: 2/255 to 16/255 on CIFAR (multiples of 8/255).
    "cw-eps": make(
        "cw-eps",
        step_frac=0.2,
        checks=False,
        attacks={"curve": {"multiples": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], "cw_steps": 100}},
    ),
    # ImageNet (Table 4): random-targeted PGD at eps 0.005 .. 0.02, AutoAttack on 1000 images.
    "imagenet": make(
        "imagenet",
        n=5000,
        batch_size=64,
        step_frac=0.2,
        attacks={
            "fgsm": {},
            "pgd": {"runs": [[20, 1]]},
            "autoattack": {"n": 1000},
            "curve": {"multiples": [0.0, 0.5, 1.0, 2.0], "n": 500},
            "large_eps": {"eps": 0.25, "n": 500},
            "targeted": {"eps": [0.005, 0.01, 0.015, 0.02], "steps": 100},
        },
    ),
}


def get_protocol(name: str, overrides: Mapping[str, Any] | None = None) -> Protocol:
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; expected one of: {', '.join(PROTOCOLS)}")
    return with_overrides(PROTOCOLS[name], overrides)


def smoke_overrides(p: Protocol) -> dict[str, Any]:
    """Budgets that keep every attack of ``p`` but run in seconds (smoke tests): 100 images,
    and each attack's own cut (AutoAttack on 10, at most 40 PGD steps and 2 restarts, ...)."""
    out: dict[str, Any] = {"n": 100}
    for name, budget in p.attacks:
        cut = ATTACKS.get(name).smoke(budget)
        out.update({f"{name}.{k}": v for k, v in cut.items()})
    return out
