"""Evaluation correctness: the C&W margin, the best PGD iterate, robustness intersected with
clean correctness, the per-image worst case, the eps-0 check, every masking threshold at its
boundary, the C&W-L2 radius per data set and AutoAttack's random state. Each test fails on
the code before these fixes."""

import math

import pytest
import torch
from torch import nn

from trainables.attacks import cw_margin, pgd_linf, pgd_linf_best, pgd_linf_to_the_end
from trainables.evaluation import evaluate, get_protocol
from trainables.evaluation.masking import (
    AA_MAX_GAP,
    CHECKS,
    EPS0_MAX_CHANGED,
    LARGE_EPS_MAX_ACC,
    RESTARTS_MAX_GAIN,
    SQUARE_MAX_GAIN,
    ZERO_GRAD_MAX_FRAC,
    noise,
)
from trainables.evaluation.runner import worst_case


class Scaled(nn.Module):
    """Logits times a constant: the same decisions, margins far beyond C&W's kappa of 50."""

    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.scale * self.net(x)


# ----------------------------------------------------------------------------- C&W margin
def test_cw_margin_caps_the_success_side_and_keeps_the_gradient_of_confident_images():
    logits = torch.tensor([[100.0, 0.0, -5.0], [0.0, 80.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    m = cw_margin(logits, y, kappa=50.0)
    assert m.tolist() == [-100.0, 50.0]  # a confident image keeps its margin; a fooled one is capped
    m.sum().backward()
    assert logits.grad[0].abs().sum() > 0 and logits.grad[1].abs().sum() == 0


def test_cw_linf_attacks_images_whose_margin_exceeds_kappa(natural, digits):
    """With logits x1000 every margin is far beyond kappa = 50: the floor form never attacks
    them (C&W-L-inf = clean accuracy); the cap form breaks as many as plain PGD does."""
    model = Scaled(natural, 1000.0).eval()
    p = get_protocol("basic", {"n": 100, "pgd": False, "cw_linf": {"steps": 20}, "checks": False})
    r = evaluate(model, digits, p, seed=0)
    assert r["cw_linf_acc"] < r["clean_acc"] - 0.2, r  # the floor form reported exactly clean accuracy


# ----------------------------------------------------------------------------- best iterate
class Bump(nn.Module):
    """1-D input; class 1 only in a narrow band around 0.06. From x = 0 with steps of 0.05, PGD
    lands in the band at step 1 and steps out of it (to 0.1) at step 2."""

    def forward(self, x):
        z = 10 * torch.exp(-(((x.flatten(1)[:, 0] - 0.06) / 0.01) ** 2)) - 1
        return torch.stack([torch.zeros_like(z), z], 1)


def test_pgd_keeps_the_iterate_that_fools_not_the_last_one():
    x, y = torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)
    kw = dict(eps=0.1, steps=2, step_size=0.05, random_start=False)
    last = pgd_linf(Bump(), x, y, **kw)
    best = pgd_linf_best(Bump(), x, y, **kw)
    assert Bump()(last).argmax(1).item() == 0  # stepped back out of the band
    assert Bump()(best).argmax(1).item() == 1 and best.item() == pytest.approx(0.05)


# ----------------------------------------------------------------------------- clean correctness
class WrongWhenClean(nn.Module):
    """Wrong on the data as it is (every digits pixel is a multiple of 1/16), right (as the
    wrapped model) on any perturbed input: an attack output must not make it 'robust'."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        on_grid = ((x * 16 - (x * 16).round()).abs() < 1e-6).flatten(1).all(1)
        return torch.where(on_grid[:, None], logits.roll(1, dims=1), logits)


def test_robust_accuracy_never_exceeds_clean_accuracy(natural, digits):
    model = WrongWhenClean(natural).eval()
    p = get_protocol("basic", {"n": 100, "checks": False})
    r = evaluate(model, digits, p, seed=0)
    assert r["clean_acc"] < 0.2
    assert r["pgd20_acc"] <= r["clean_acc"] and r["robust_acc_min"] <= r["clean_acc"]


# ----------------------------------------------------------------------------- per-image worst case
def _per_image(correct: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.bool) for k, v in correct.items()}


def test_worst_case_is_per_image_over_the_images_every_attack_ran_on():
    # PGD breaks images 0 and 1, AutoAttack (on the first 4 only) breaks images 2 and 3:
    # each alone leaves 50 % on those 4 images, together they leave none
    w = worst_case(
        _per_image({"clean": [1, 1, 1, 1, 1, 0], "pgd20": [0, 0, 1, 1, 1, 0], "autoattack": [1, 1, 0, 0]}),
        ["pgd20", "autoattack"],
    )
    assert w["robust_acc_min"] == 0.0 and w["robust_acc_min_n"] == 4
    assert w["robust_acc_min_attacks"] == ["pgd20", "autoattack"]
    # beside it, every number on the same 4 images (PGD-20 is 50 % there, 50 % on all 6)
    assert (w["wc_clean_acc"], w["wc_pgd20_acc"], w["wc_autoattack_acc"]) == (1.0, 0.5, 0.5)


@pytest.mark.slow  # AutoAttack
def test_the_reported_worst_case_is_at_most_every_attack_on_the_same_images(natural, digits):
    p = get_protocol(
        "quick", {"n": 80, "autoattack.n": 40, "curve.n": 40, "large_eps.n": 40, "cw_l2.n": 10, "transfer": False}
    )
    r = evaluate(natural, digits, p, seed=0)
    assert r["robust_acc_min_n"] == 40
    assert r["robust_acc_min"] <= min(
        r["autoattack_acc"], r["masking_checks"]["pgd_overestimates_robustness"]["values"]["pgd20_acc"]
    )
    # the eps-0 point goes through the attack pipeline and agrees with clean accuracy
    assert r["masking_checks"]["eps0_differs_from_clean"]["ok"] is True
    assert r["cw_l2_radius"] == 0.5 and r["cw_l2_acc"] < r["clean_acc"]  # informative on 8x8 inputs


class Noisy(nn.Module):
    """A randomized model (noise on its input at every call): its predictions at eps 0 differ
    from the clean ones, which the eps-0 check must catch."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.5 * torch.randn_like(x))


def test_eps0_check_fires_when_the_pipeline_changes_predictions(natural, digits):
    torch.manual_seed(0)
    p = get_protocol("basic", {"n": 60, "curve": {"multiples": [0.0, 1.0], "n": 60}})
    r = evaluate(Noisy(natural).eval(), digits, p, seed=0)
    assert "eps0_differs_from_clean" in r["masking_flags"], r["masking_checks"]["eps0_differs_from_clean"]


# ----------------------------------------------------------------------------- thresholds at their boundary
def _check(name, r, extra):
    return CHECKS.get(name)(r, extra).ok


@pytest.mark.parametrize(
    "name, at, past",
    [
        (
            "not_zero_at_large_eps",
            ({"large_eps": 0.5, "large_eps_acc": LARGE_EPS_MAX_ACC}, {}),
            ({"large_eps": 0.5, "large_eps_acc": LARGE_EPS_MAX_ACC + 0.01}, {}),
        ),
        (
            "more_steps_or_restarts_still_help",
            ({"n_eval": 200}, {"pgd_runs": {(20, 1): 0.5, (100, 3): 0.5 - RESTARTS_MAX_GAIN}}),
            ({"n_eval": 200}, {"pgd_runs": {(20, 1): 0.5, (100, 3): 0.5 - RESTARTS_MAX_GAIN - 0.005}}),
        ),
        (
            "black_box_beats_white_box",
            ({}, {"autoattack_n": 1000, "autoattack_steps": {"apgd-ce": 0.5, "square": 0.5 - SQUARE_MAX_GAIN}}),
            ({}, {"autoattack_n": 1000, "autoattack_steps": {"apgd-ce": 0.5, "square": 0.5 - SQUARE_MAX_GAIN - 0.001}}),
        ),
        (
            "zero_input_gradients",
            ({"zero_grad_frac": ZERO_GRAD_MAX_FRAC}, {}),
            ({"zero_grad_frac": ZERO_GRAD_MAX_FRAC + 0.005}, {}),
        ),
        (
            "pgd_overestimates_robustness",
            ({"autoattack_acc": 0.4}, {"autoattack_pgd20_acc": 0.4 + AA_MAX_GAP}),
            ({"autoattack_acc": 0.4}, {"autoattack_pgd20_acc": 0.4 + AA_MAX_GAP + 0.01}),
        ),
        (
            "eps0_differs_from_clean",
            ({}, {"eps0_changed": EPS0_MAX_CHANGED, "curve_n": 100}),
            ({}, {"eps0_changed": EPS0_MAX_CHANGED + 1, "curve_n": 100}),
        ),
        (
            "one_step_beats_iterative",
            ({"n_eval": 100, "fgsm_acc": 0.3}, {"pgd_runs": {(20, 1): 0.3 + noise(100) - 1e-6}}),
            ({"n_eval": 100, "fgsm_acc": 0.3}, {"pgd_runs": {(20, 1): 0.3 + 0.02}}),
        ),
        (
            "transfer_beats_white_box",
            ({"n_eval": 100, "transfer_acc": 0.5 - 0.01}, {"transfer_white_box_acc": 0.5}),
            ({"n_eval": 100, "transfer_acc": 0.5 - 0.02}, {"transfer_white_box_acc": 0.5}),
        ),
        (
            "accuracy_not_monotone_in_eps",
            ({"curve_eps": [0, 0.1], "curve_pgd_acc": [0.5, 0.51]}, {"curve_n": 100}),
            ({"curve_eps": [0, 0.1], "curve_pgd_acc": [0.5, 0.52]}, {"curve_n": 100}),
        ),
        (
            "perturbation_out_of_bounds",
            ({}, {"bound_violations": {"pgd20": 1e-5}}),
            ({}, {"bound_violations": {"pgd20": 2e-5}}),
        ),
    ],
)
def test_each_masking_check_is_silent_at_its_threshold_and_fires_past_it(name, at, past):
    assert _check(name, *at) is True
    assert _check(name, *past) is False


def test_every_registered_check_has_a_boundary_test():
    tested = {p[0] for p in test_each_masking_check_is_silent_at_its_threshold_and_fires_past_it.pytestmark[0].args[1]}
    assert tested == set(CHECKS.names())


# ----------------------------------------------------------------------------- AutoAttack's random state
@pytest.mark.slow  # AutoAttack
def test_autoattack_leaves_the_global_random_state_alone(natural, digits):
    from trainables.evaluation.attacks.autoattack import autoattack

    x, y = digits.test_tensors(8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _, _ = autoattack(natural, x, y, eps=0.1, seed=5, device=torch.device("cpu"), batch_size=8)
    assert torch.equal(torch.get_rng_state(), before)
    b, _, _ = autoattack(natural, x, y, eps=0.1, seed=5, device=torch.device("cpu"), batch_size=8)
    assert torch.equal(a, b) and not math.isnan(float(a.sum()))


# ----------------------------------------------------------------------------- cost cuts that change no number
@pytest.mark.parametrize("eps,steps,restarts,loss", [(0.1, 20, 1, "ce"), (0.1, 30, 3, "ce"), (0.1, 10, 2, "cw")])
def test_pgd_early_exit_gives_what_attacking_every_input_to_the_end_gives(natural, digits, eps, steps, restarts, loss):
    x, y = digits.test_tensors(96)
    kw = dict(eps=eps, steps=steps, step_size=eps / 4, restarts=restarts, loss=loss, kappa=50.0)
    ref = pgd_linf_to_the_end(natural, x, y, generator=torch.Generator().manual_seed(3), **kw)
    fast = pgd_linf_best(natural, x, y, bn="eval", generator=torch.Generator().manual_seed(3), **kw)
    fooled = natural(ref).argmax(1) != y
    assert 0 < int(fooled.sum()) < len(y)  # some inputs leave early, some stay to the end
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-6)


@pytest.mark.slow  # AutoAttack
def test_autoattack_curve_never_rises_and_attacks_only_what_is_still_standing(natural, digits, monkeypatch):
    import trainables.evaluation.attacks.autoattack as ea

    calls = []
    real = ea.autoattack

    def spy(model, x, y, *, eps, **kw):
        calls.append((round(eps, 6), len(x)))
        return real(model, x, y, eps=eps, **kw)

    monkeypatch.setattr(ea, "autoattack", spy)
    n_aa, n_curve = 10, 16  # AutoAttack's images, and the curve's (a superset)
    p = get_protocol(
        "standard",
        {
            "n": 40,
            "autoattack.n": n_aa,
            "curve.n": n_curve,
            "pgd": {"runs": [[10, 1]]},
            "curve.multiples": [0.0, 0.5, 1.0, 2.0],
            "large_eps": False,
        },
    )
    r = evaluate(natural, digits, p, eps=0.05, seed=0, device=torch.device("cpu"))
    aa = r["curve_autoattack_acc"]
    assert all(b <= a for a, b in zip(aa, aa[1:])), aa
    clean_n = int(round(r["curve_autoattack_acc"][0] * n_curve))
    assert calls[0] == (0.05, n_aa)  # the protocol's own run
    assert calls[1] == (0.025, clean_n)  # the smallest eps: every clean-correct curve image
    standing = int(round(aa[1] * n_curve))
    # only images the protocol's run did not cover
    assert calls[2][0] == 0.05 and calls[2][1] <= min(n_curve - n_aa, standing)
    if len(calls) > 3:  # the largest eps: only what no smaller eps broke
        assert calls[3][0] == 0.1 and calls[3][1] == int(round(aa[2] * n_curve))
    assert aa[2] <= r["autoattack_acc"] * n_aa / n_curve + (n_curve - n_aa) / n_curve + 1e-6
