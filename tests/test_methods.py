"""Every registered method on every small model, and the method-specific properties."""

import pytest
import torch
import torch.nn.functional as F

from trainables.methods import METHODS
from trainables.methods.sprout import SproutConfig, soft_cross_entropy
from trainables.models import create_model

SMALL_MODELS = {
    "small_cnn": {"width": 8},
    "vgg16": {"width_factor": 0.0625},
    "wrn": {"depth": 10, "width": 1},
    "preact_resnet18": {"width": 4},
}


def make(method: str, model: str = "small_cnn", margs=None, cfg=None, lr=0.1, seed=0, in_ch=1):
    torch.manual_seed(seed)
    net = create_model(
        model, SMALL_MODELS[model] if margs is None else margs, num_classes=10, in_channels=in_ch, image_size=8
    )
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    cls = METHODS.get(method)
    conf = cfg if cfg is not None else cls.Config()
    if hasattr(conf, "resolved"):
        conf = conf.resolved()
    return net, cls(net, opt, conf, num_classes=10, eps=0.1, device=torch.device("cpu"), seed=seed)


@pytest.mark.parametrize("model", sorted(SMALL_MODELS))
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_steps_on_every_small_model(method, model, tiny_batch):
    x, y = tiny_batch
    net, m = make(method, model)
    before = [p.detach().clone() for p in net.parameters()]
    out = m.train_step(x, y)
    assert torch.isfinite(out["loss"]) and out["logits"].shape == (8, 10)
    changed = [not torch.equal(a, b) for a, b in zip(before, net.parameters())]
    assert sum(changed) >= len(changed) // 2, f"{method} on {model} left most parameters unchanged"


@pytest.mark.parametrize("name", ["resnet50", "resnet152"])
def test_imagenet_models_build_and_run(name):
    net = create_model(name, {}, num_classes=7, in_channels=3, image_size=32)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("method", ["pgd_at", "trades", "fast_at", "backward_smoothing", "free_at"])
def test_adversarial_inputs_stay_in_the_ball_and_box(method, tiny_batch):
    x, y = tiny_batch
    _, m = make(method)
    for _ in range(2):
        x_adv = m.train_step(x, y)["x_adv"]
        assert (x_adv - x).abs().max() <= 0.1 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert (x_adv - x).abs().max() > 0.01  # it did perturb


def test_free_at_replays_and_keeps_its_perturbation(tiny_batch):
    x, y = tiny_batch
    net, m = make("free_at")
    calls = []
    net.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].detach().clone()))
    m.train_step(x, y)
    assert len(calls) == m.cfg.replays == m.replays_done
    carried = m.delta.clone()
    assert carried.abs().max() > 0
    x2 = torch.rand_like(x)
    m.train_step(x2, y)
    # the first replay of the next minibatch starts from the carried perturbation
    assert torch.allclose(calls[m.cfg.replays], (x2 + carried).clamp(0, 1))
    assert m.replays_done == 2 * m.cfg.replays


# ----------------------------------------------------------------------------- SPROUT
def test_dirichlet_labels_lie_on_the_simplex(tiny_batch):
    _, m = make("sprout")
    y1 = F.one_hot(tiny_batch[1], 10).float()
    for conc in ("eq6", "alg1", "additive"):
        m.cfg = SproutConfig(concentration=conc).resolved()
        labels = m.sample_labels(y1, m.beta)
        assert labels.shape == (8, 10) and (labels >= 0).all()
        assert torch.allclose(labels.sum(1), torch.ones(8), atol=1e-5)


def test_beta_stays_positive_after_many_ascent_steps(tiny_batch):
    x, y = tiny_batch
    _, m = make("sprout", cfg=SproutConfig(lr_beta=5.0))
    for _ in range(60):
        m.train_step(x, y)
    assert (m.beta > 0).all() and torch.isfinite(m.beta).all()
    assert (m.beta >= m.cfg.beta_min).all()


def test_beta_step_follows_the_finite_difference_and_raises_the_loss():
    """The loss is linear in y~, so its expectation has a closed form through the Dirichlet
    mean conc / sum(conc): the sampled (implicitly reparameterized) beta gradient must match the
    finite difference of that exact expectation, and an ascent step must raise it."""
    torch.manual_seed(0)
    k = 5
    logits = torch.randn(1, k) * 2
    y = F.one_hot(torch.tensor([1]), k).float()
    _, m = make("sprout", cfg=SproutConfig(concentration="additive", onehot_scale=10.0))
    m.num_classes = k

    def exact(beta):
        conc = m.concentration(y, beta)
        return -(conc / conc.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum()

    beta = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.7], requires_grad=True)
    s = 40000
    sampled = soft_cross_entropy(logits.expand(s, k), m.sample_labels(y.expand(s, k), beta))
    (g,) = torch.autograd.grad(sampled, beta)
    h = 1e-3
    fd = torch.stack([(exact(beta.detach() + h * e) - exact(beta.detach() - h * e)) / (2 * h) for e in torch.eye(k)])
    assert F.cosine_similarity(g, fd, dim=0) > 0.98, (g, fd)
    assert torch.allclose(g, fd, atol=0.02)
    m.beta_tensor = beta.detach().clone().requires_grad_(True)
    m.beta_optimizer = torch.optim.SGD([m.beta_tensor], lr=0.5, maximize=True)
    before = exact(m.beta).item()
    m.beta_tensor.grad = g.clone()
    m.beta_step()
    assert exact(m.beta).item() > before


def test_sprout_state_round_trips_and_the_removed_softplus_form_is_refused():
    from trainables.errors import CheckpointError, ConfigError

    _, m = make("sprout")
    _, other = make("sprout")
    with torch.no_grad():
        m.beta_tensor.add_(0.25)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.beta, m.beta) and torch.equal(other.beta_start, m.beta_start)
    old = {
        "rho": torch.zeros(10),
        "beta": torch.ones(10),
        "beta_param": "softplus",
        "beta_optimizer": m.beta_optimizer.state_dict(),
    }
    with pytest.raises(CheckpointError, match="softplus"):
        other.load_state_dict(old)
    with pytest.raises(CheckpointError, match="softplus"):  # the oldest form named no parametrization
        other.load_state_dict({k: v for k, v in old.items() if k != "beta_param"})
    projected = {**old, "rho": torch.ones(10) * 0.5, "beta": torch.ones(10) * 0.5, "beta_param": "projected"}
    other.load_state_dict(projected)  # a projected-form checkpoint of the earlier layout still loads
    assert torch.equal(other.beta, torch.ones(10) * 0.5)
    from trainables.schema import build

    with pytest.raises(ConfigError, match="beta_param"):
        build(SproutConfig, {"beta_param": "softplus"}, "method_args")


def test_all_modules_off_is_natural_cross_entropy(tiny_batch):
    x, y = tiny_batch
    net, m = make("sprout", cfg=SproutConfig(gaussian=False, mixup=False, dirichlet=False))
    xt, ya, yb, lam = m.augment(x, y)
    assert torch.equal(xt, x) and lam == 1.0
    logits = net(x)
    assert torch.allclose(m.loss(logits, ya, yb, lam, m.beta), F.cross_entropy(logits, y), atol=1e-6)
    ls = SproutConfig(gaussian=False, mixup=False, dirichlet=False, label_smoothing=0.1)
    m.cfg = ls.resolved()
    assert torch.allclose(
        m.loss(logits, ya, yb, lam, m.beta), F.cross_entropy(logits, y, label_smoothing=0.1), atol=1e-6
    )


def test_paper_variant_uses_one_forward_and_one_backward(tiny_batch, monkeypatch):
    x, y = tiny_batch
    net, m = make("sprout")
    forwards, backwards, grads = [], [], []
    net.register_forward_hook(lambda *a: forwards.append(1))
    orig_backward = torch.Tensor.backward
    orig_grad = torch.autograd.grad
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda self, *a, **k: (backwards.append(1), orig_backward(self, *a, **k))[1]
    )
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (grads.append(1), orig_grad(*a, **k))[1])
    beta0 = m.beta.clone()
    w0 = [p.detach().clone() for p in net.parameters()]
    m.train_step(x, y)
    assert (len(forwards), len(backwards), len(grads)) == (1, 1, 0)
    assert not torch.equal(beta0, m.beta)  # beta moved ...
    assert any(not torch.equal(a, b) for a, b in zip(w0, net.parameters()))  # ... and theta, from one pass


def test_reference_variant_does_three_theta_steps_then_a_clean_beta_step(tiny_batch):
    x, y = tiny_batch
    net, m = make("sprout", cfg=SproutConfig(variant="reference"))
    seen = []
    net.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    assert torch.allclose(m.beta, torch.ones(10), atol=1e-4)  # beta starts at ones
    m.train_step(x, y)
    assert len(seen) == 4
    assert all(not torch.equal(s, x) for s in seen[:3]) and torch.equal(seen[3], x)


@pytest.mark.parametrize("method", ["natural", "sprout"])
def test_a_diverging_run_is_reported_as_diverged_not_as_a_crash(method, digits):
    """At lr 1e20 the loss turns NaN within an epoch. SPROUT's beta follows it, and the next
    Dirichlet refuses a NaN concentration: that too is divergence (a trial status), not a crash."""
    from trainables.config import resolve
    from trainables.errors import DivergedError
    from trainables.loop import build, fit

    comp = build(
        resolve({"method": method, "epochs": 1, "optim": {"lr": 1e20}, "monitor": {"every": 0}}), bundle=digits
    )
    with pytest.raises(DivergedError, match="diverged at epoch 1"):
        fit(comp)


@pytest.mark.parametrize(
    "switches",
    [{"dirichlet": False}, {"dirichlet": False, "label_smoothing": 0.1}, {"gaussian": False, "mixup": False}],
)
def test_the_reference_variant_runs_every_ablation_arm(tiny_batch, switches):
    """Table 7's arms switch modules off in the released-code variant too; without the Dirichlet
    beta shapes no label, so it does not move (and nothing differentiates through it)."""
    x, y = tiny_batch
    net, m = make("sprout", cfg=SproutConfig(variant="reference", **switches))
    beta0, w0 = m.beta.clone(), [p.detach().clone() for p in net.parameters()]
    out = m.train_step(x, y)
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(w0, net.parameters()))
    assert torch.equal(beta0, m.beta) == (not m.cfg.dirichlet)
