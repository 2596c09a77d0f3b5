"""Automatic gradient-masking checks (the signs listed in REFERENCE.md, after AutoAttack's
``checks.py``). Each check is a named flag with the numbers behind it; a check whose inputs the
protocol did not produce is reported as skipped (``ok: null``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Check:
    name: str
    ok: bool | None  # None = skipped
    detail: str
    values: dict[str, Any]


def _noise(n: int) -> float:
    """One test image's worth of accuracy: differences below this are sampling noise."""
    return 1.0 / max(n, 1) + 1e-9


def run_checks(r: dict[str, Any], extra: dict[str, Any]) -> list[Check]:
    """``r`` is the flat result dict so far; ``extra`` holds per-attack internals (bounds,
    subset accuracies) that are not reported as metrics."""
    out: list[Check] = []
    n = int(r.get("n_eval", 1))
    tol = _noise(n)

    curve = r.get("curve_pgd_acc")
    eps_list = r.get("curve_eps")
    if curve:
        nc = extra.get("curve_n", n)
        bad = [(eps_list[i], curve[i], curve[i + 1]) for i in range(len(curve) - 1) if curve[i + 1] > curve[i] + _noise(nc)]
        out.append(Check("accuracy_not_monotone_in_eps", not bad,
                         "PGD accuracy rises with eps at " + ", ".join(f"eps {e:.4g}: {a:.3f} -> {b:.3f}" for e, a, b in bad)
                         if bad else "PGD accuracy is non-increasing in eps",
                         {"eps": eps_list, "pgd_acc": curve}))
        if eps_list and eps_list[0] == 0.0:
            clean_sub = extra.get("curve_clean_acc", r["clean_acc"])
            same = abs(curve[0] - clean_sub) < 1e-9
            out.append(Check("eps0_differs_from_clean", same,
                             f"accuracy at eps 0 is {curve[0]:.4f}, clean accuracy {clean_sub:.4f}",
                             {"acc_eps0": curve[0], "clean_acc": clean_sub}))
    else:
        out.append(Check("accuracy_not_monotone_in_eps", None, "no eps curve in this protocol", {}))
        out.append(Check("eps0_differs_from_clean", None, "no eps curve in this protocol", {}))

    if "large_eps_acc" in r:
        acc = r["large_eps_acc"]
        out.append(Check("not_zero_at_large_eps", acc <= 0.05,
                         f"PGD accuracy at eps {r['large_eps']:.3g} is {acc:.3f} (expected <= 0.05)",
                         {"eps": r["large_eps"], "acc": acc}))
    else:
        out.append(Check("not_zero_at_large_eps", None, "large-eps PGD not run", {}))

    it_keys = [k for k in r if k.startswith("pgd") and k.endswith("_acc") and k[3:-4].replace("x", "").isdigit()]
    if "fgsm_acc" in r and it_keys:
        best_it = min(r[k] for k in it_keys)
        out.append(Check("one_step_beats_iterative", best_it <= r["fgsm_acc"] + tol,
                         f"FGSM {r['fgsm_acc']:.4f} vs best iterative PGD {best_it:.4f}",
                         {"fgsm_acc": r["fgsm_acc"], "pgd_best_acc": best_it}))
    else:
        out.append(Check("one_step_beats_iterative", None, "FGSM or PGD not run", {}))

    restart_keys = [k for k in it_keys if "x" in k[3:-4]]
    if "pgd20_acc" in r and restart_keys:
        strongest = min(restart_keys, key=lambda k: r[k])
        gap = r["pgd20_acc"] - r[strongest]
        out.append(Check("more_steps_or_restarts_still_help", gap <= 0.01 + tol,
                         f"PGD-20 {r['pgd20_acc']:.4f} vs {strongest[:-4]} {r[strongest]:.4f} (gap {gap * 100:.2f} points, expected <= 1)",
                         {"pgd20_acc": r["pgd20_acc"], strongest: r[strongest], "gap": gap}))
    else:
        out.append(Check("more_steps_or_restarts_still_help", None, "PGD-20 or PGD with restarts not run", {}))

    aa = extra.get("autoattack_steps")
    if aa and "square" in aa and len(aa) > 1:
        white = min(v for k, v in aa.items() if k != "square")
        drop = white - aa["square"]
        ok = drop <= max(0.002, _noise(extra.get("autoattack_n", n)))
        out.append(Check("black_box_beats_white_box", ok,
                         f"Square lowered accuracy by {drop * 100:.2f} points after the white-box attacks",
                         {"after_white_box": white, "after_square": aa["square"]}))
    else:
        out.append(Check("black_box_beats_white_box", None, "AutoAttack (with Square) not run", {}))

    if "transfer_acc" in r and "transfer_white_box_acc" in extra:
        wb = extra["transfer_white_box_acc"]
        out.append(Check("transfer_beats_white_box", r["transfer_acc"] >= wb - tol,
                         f"transfer {r['transfer_acc']:.4f} vs white-box PGD {wb:.4f} on the same images",
                         {"transfer_acc": r["transfer_acc"], "white_box_acc": wb}))
    else:
        out.append(Check("transfer_beats_white_box", None, "transfer attack not run", {}))

    if "zero_grad_frac" in r:
        z = r["zero_grad_frac"]
        out.append(Check("zero_input_gradients", z <= 0.01,
                         f"{z * 100:.1f}% of inputs have an all-zero input gradient (expected <= 1%)",
                         {"zero_grad_frac": z}))

    viol = extra.get("bound_violations", {})
    if viol:
        worst = max(viol.values())
        bad = {k: v for k, v in viol.items() if v > 1e-5}
        out.append(Check("perturbation_out_of_bounds", not bad,
                         ("outside the eps ball or [0, 1]: " + ", ".join(f"{k} by {v:.2e}" for k, v in bad.items()))
                         if bad else f"all adversarial inputs inside the eps ball and [0, 1] (max excess {worst:.1e})",
                         {"max_violation": viol}))

    if "autoattack_acc" in r and "autoattack_pgd20_acc" in extra:
        gap = extra["autoattack_pgd20_acc"] - r["autoattack_acc"]
        out.append(Check("pgd_overestimates_robustness", gap <= 0.05,
                         f"PGD-20 {extra['autoattack_pgd20_acc']:.4f} vs AutoAttack {r['autoattack_acc']:.4f} "
                         f"on the same {extra.get('autoattack_n')} images (gap {gap * 100:.1f} points, expected <= 5)",
                         {"pgd20_acc": extra["autoattack_pgd20_acc"], "autoattack_acc": r["autoattack_acc"], "gap": gap}))
    return out


def summarize(checks: list[Check]) -> dict[str, Any]:
    flags = [c.name for c in checks if c.ok is False]
    return {
        "masking_flags": flags,
        "masking_ok": not flags,
        "masking_checks": {c.name: asdict(c) for c in checks},
    }
