"""Automatic gradient-masking checks, one small registered function each (after AutoAttack's
``checks.py``). Each returns a named flag with the numbers behind it; a check whose inputs the
protocol did not produce is reported as skipped (``ok: None``). Thresholds are named
constants here and stated the same way in the README and in each flag's detail text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..registry import Registry

# Thresholds (accuracies are fractions; one image's worth of accuracy is always noise on top).
LARGE_EPS_MAX_ACC = 0.05  # PGD at a large eps should bring accuracy to at most this
RESTARTS_MAX_GAIN = 0.01  # more steps or restarts may lower PGD-20's accuracy by at most 1 point (or one image)
SQUARE_MAX_GAIN = 0.002  # Square after the white-box attacks may lower accuracy by at most 0.2 points
ZERO_GRAD_MAX_FRAC = 0.01  # at most 1 % of inputs with an all-zero input gradient
BOUND_TOLERANCE = 1e-5  # how far (pixel units) an adversarial input may leave the eps ball or [0, 1]
AA_MAX_GAP = 0.05  # PGD-20 may exceed AutoAttack on the same images by at most 5 points
EPS0_MAX_CHANGED = 0  # images whose correctness may change through the attack pipeline at eps 0
_FLOAT = 1e-9  # accuracies are ratios of counts: a value at a threshold is at it, not past it


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str
    values: dict[str, Any]


CheckFn = Callable[[dict[str, Any], dict[str, Any]], Check]
CHECKS: Registry[CheckFn] = Registry("masking check")


def masking_check(name: str):
    """Register ``fn(r, extra) -> Check``: ``r`` is the flat result so far, ``extra`` the
    attacks' internals (bounds, per-run accuracies, subset sizes) that are not metrics."""
    return CHECKS.register(name)


def noise(n: int) -> float:
    """One test image's worth of accuracy: differences up to this are sampling noise."""
    return 1.0 / max(n, 1) + _FLOAT


def _skip(name: str, why: str) -> Check:
    return Check(name, None, why, {})


@masking_check("accuracy_not_monotone_in_eps")
def not_monotone(r, extra) -> Check:
    name = "accuracy_not_monotone_in_eps"
    curve, eps = r.get("curve_pgd_acc"), r.get("curve_eps")
    if not curve:
        return _skip(name, "no eps curve in this protocol")
    tol = noise(extra.get("curve_n", r.get("n_eval", 1)))
    bad = [(eps[i], curve[i], curve[i + 1]) for i in range(len(curve) - 1) if curve[i + 1] > curve[i] + tol]
    detail = (
        "PGD accuracy rises with eps at " + ", ".join(f"eps {e:.4g}: {a:.3f} -> {b:.3f}" for e, a, b in bad)
        if bad
        else "PGD accuracy is non-increasing in eps"
    )
    return Check(name, not bad, detail, {"eps": eps, "pgd_acc": curve})


@masking_check("eps0_differs_from_clean")
def eps0_differs(r, extra) -> Check:
    """The attack pipeline with a zero budget must hand back inputs the model classifies as it
    does the clean ones: a broken projection, preprocessing or a randomized model shows here."""
    name = "eps0_differs_from_clean"
    if "eps0_changed" not in extra:
        return _skip(name, "no eps-0 point on the eps curve")
    changed, m = extra["eps0_changed"], extra.get("curve_n", r.get("n_eval", 0))
    return Check(
        name,
        changed <= EPS0_MAX_CHANGED,
        f"{changed} of {m} images change correctness between the clean input and the attack pipeline "
        f"at eps 0 (expected {EPS0_MAX_CHANGED})",
        {"changed": changed, "n": m},
    )


@masking_check("not_zero_at_large_eps")
def not_zero_at_large_eps(r, extra) -> Check:
    name = "not_zero_at_large_eps"
    if "large_eps_acc" not in r:
        return _skip(name, "large-eps PGD not run")
    acc = r["large_eps_acc"]
    return Check(
        name,
        acc <= LARGE_EPS_MAX_ACC + _FLOAT,
        f"PGD accuracy at eps {r['large_eps']:.3g} is {acc:.3f} (expected <= {LARGE_EPS_MAX_ACC:g})",
        {"eps": r["large_eps"], "acc": acc},
    )


@masking_check("one_step_beats_iterative")
def one_step_beats_iterative(r, extra) -> Check:
    name = "one_step_beats_iterative"
    runs = extra.get("pgd_runs") or {}
    if "fgsm_acc" not in r or not runs:
        return _skip(name, "FGSM or PGD not run")
    best = min(runs.values())
    return Check(
        name,
        best <= r["fgsm_acc"] + noise(r.get("n_eval", 1)),
        f"FGSM {r['fgsm_acc']:.4f} vs best iterative PGD {best:.4f}",
        {"fgsm_acc": r["fgsm_acc"], "pgd_best_acc": best},
    )


@masking_check("more_steps_or_restarts_still_help")
def more_steps_help(r, extra) -> Check:
    name = "more_steps_or_restarts_still_help"
    runs = extra.get("pgd_runs") or {}
    stronger = {k: v for k, v in runs.items() if k[1] > 1}
    if (20, 1) not in runs or not stronger:
        return _skip(name, "PGD-20 or PGD with restarts not run")
    (steps, restarts), acc = min(stronger.items(), key=lambda kv: kv[1])
    gap = runs[(20, 1)] - acc
    allowed = max(RESTARTS_MAX_GAIN + _FLOAT, noise(r.get("n_eval", 1)))  # 1 point, or one image when that is more
    return Check(
        name,
        gap <= allowed,
        f"PGD-20 {runs[(20, 1)]:.4f} vs {restarts}xPGD-{steps} {acc:.4f} (gap {gap * 100:.2f} points, "
        f"expected <= {RESTARTS_MAX_GAIN * 100:g} point or one image)",
        {"pgd20_acc": runs[(20, 1)], f"pgd{steps}x{restarts}_acc": acc, "gap": gap},
    )


@masking_check("black_box_beats_white_box")
def black_box_beats_white_box(r, extra) -> Check:
    name = "black_box_beats_white_box"
    aa = extra.get("autoattack_steps")
    if not aa or "square" not in aa or len(aa) < 2:
        return _skip(name, "AutoAttack (with Square) not run")
    white = min(v for k, v in aa.items() if k != "square")
    drop = white - aa["square"]
    return Check(
        name,
        drop <= max(SQUARE_MAX_GAIN + _FLOAT, noise(extra.get("autoattack_n", 1))),
        f"Square lowered accuracy by {drop * 100:.2f} points after the white-box attacks "
        f"(expected <= {SQUARE_MAX_GAIN * 100:g} or one image)",
        {"after_white_box": white, "after_square": aa["square"]},
    )


@masking_check("transfer_beats_white_box")
def transfer_beats_white_box(r, extra) -> Check:
    name = "transfer_beats_white_box"
    if "transfer_acc" not in r or "transfer_white_box_acc" not in extra:
        return _skip(name, "transfer attack not run")
    wb = extra["transfer_white_box_acc"]
    return Check(
        name,
        r["transfer_acc"] >= wb - noise(r.get("n_eval", 1)),
        f"transfer {r['transfer_acc']:.4f} vs white-box PGD {wb:.4f} on the same images",
        {"transfer_acc": r["transfer_acc"], "white_box_acc": wb},
    )


@masking_check("zero_input_gradients")
def zero_input_gradients(r, extra) -> Check:
    name = "zero_input_gradients"
    if "zero_grad_frac" not in r:
        return _skip(name, "input gradients not measured")
    z = r["zero_grad_frac"]
    return Check(
        name,
        z <= ZERO_GRAD_MAX_FRAC + _FLOAT,
        f"{z * 100:.1f}% of inputs have an all-zero input gradient (expected <= {ZERO_GRAD_MAX_FRAC * 100:g}%)",
        {"zero_grad_frac": z},
    )


@masking_check("perturbation_out_of_bounds")
def out_of_bounds(r, extra) -> Check:
    name = "perturbation_out_of_bounds"
    viol = extra.get("bound_violations") or {}
    if not viol:
        return _skip(name, "no attack produced inputs")
    bad = {k: v for k, v in viol.items() if v > BOUND_TOLERANCE}
    detail = (
        "outside the eps ball or [0, 1]: " + ", ".join(f"{k} by {v:.2e}" for k, v in bad.items())
        if bad
        else f"all adversarial inputs inside the eps ball and [0, 1] (max excess {max(viol.values()):.1e}, "
        f"tolerance {BOUND_TOLERANCE:g})"
    )
    return Check(name, not bad, detail, {"max_violation": viol})


@masking_check("pgd_overestimates_robustness")
def pgd_overestimates(r, extra) -> Check:
    name = "pgd_overestimates_robustness"
    if "autoattack_acc" not in r or "autoattack_pgd20_acc" not in extra:
        return _skip(name, "AutoAttack or PGD-20 not run")
    gap = extra["autoattack_pgd20_acc"] - r["autoattack_acc"]
    return Check(
        name,
        gap <= AA_MAX_GAP + _FLOAT,
        f"PGD-20 {extra['autoattack_pgd20_acc']:.4f} vs AutoAttack {r['autoattack_acc']:.4f} on the same "
        f"{extra.get('autoattack_n')} images (gap {gap * 100:.1f} points, expected <= {AA_MAX_GAP * 100:g})",
        {"pgd20_acc": extra["autoattack_pgd20_acc"], "autoattack_acc": r["autoattack_acc"], "gap": gap},
    )


def run_checks(r: dict[str, Any], extra: dict[str, Any]) -> list[Check]:
    """Every registered check, in registration order."""
    return [CHECKS.get(name)(r, extra) for name in CHECKS.ordered()]


def summarize(checks: list[Check]) -> dict[str, Any]:
    flags = [c.name for c in checks if c.ok is False]
    return {"masking_flags": flags, "masking_ok": not flags, "masking_checks": {c.name: asdict(c) for c in checks}}


def describe_flags(flags: list[str] | None) -> str:
    """How a trial's masking flags read in every table: '-' (checks not run), 'ok' or 'FLAGGED: a,b'."""
    if flags is None:
        return "-"
    return ("FLAGGED: " + ",".join(flags)) if flags else "ok"
