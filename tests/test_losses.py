"""Losses and penalties against hand-computed values; every loss conf/loss offers is instantiated and run."""

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.testing import assert_close

from ganbench import methods
from ganbench.constraints import R1, DivergencePenalty, GradientPenalty, GradientPenaltyConstraint, NoConstraint
from ganbench.errors import GanbenchError
from ganbench.losses import GANQP, LSGAN, SGAN, WGAN, WGANGP, Hinge, Loss, LossTerms, WGANDiv

CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
D_REAL, D_FAKE = [1.0, -0.5], [0.2, 2.0]


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def mean(*xs):
    return sum(xs) / len(xs)


def scores():
    return torch.tensor(D_REAL), torch.tensor(D_FAKE)


def images():
    """Two pairs: pair 0 differs by 1 on every pixel, pair 1 by 1 on half the pixels."""
    real = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    fake = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    return real, fake


def check(terms, expected):
    assert isinstance(terms, LossTerms)
    assert_close(terms.total, torch.tensor(expected))


# (loss, expected L_D, expected L_G) for D_REAL=[1, -0.5], D_FAKE=[0.2, 2]
CASES = {
    "sgan": (
        SGAN(),
        mean(softplus(-1.0), softplus(0.5)) + mean(softplus(0.2), softplus(2.0)),
        mean(softplus(-0.2), softplus(-2.0)),
    ),
    "sgan_saturating": (
        SGAN(saturating=True),
        mean(softplus(-1.0), softplus(0.5)) + mean(softplus(0.2), softplus(2.0)),
        mean(math.log(1 - sigmoid(0.2)), math.log(1 - sigmoid(2.0))),
    ),
    "wgan": (WGAN(), 1.1 - 0.25, -1.1),
    "wgan_gp": (WGANGP(), 1.1 - 0.25, -1.1),  # the GP term is a penalty, which the constraint runs
    "wgan_div": (WGANDiv(), 1.1 - 0.25, -1.1),
    "hinge": (Hinge(), mean(0.0, 1.5) + mean(1.2, 3.0), -1.1),
    "lsgan": (LSGAN(), 0.5 * mean(0.0, 2.25) + 0.5 * mean(0.04, 4.0), 0.5 * mean(0.64, 1.0)),
}


@pytest.mark.parametrize("name", CASES)
def test_loss_values(name):
    loss, expected_d, expected_g = CASES[name]
    d_real, d_fake = scores()
    real, fake = images()
    check(loss.d_loss(d_real, d_fake, real, fake), expected_d)
    check(loss.g_loss(d_fake, None, None, fake), expected_g)


@pytest.mark.parametrize("norm, dist", [("l2", [1.0, math.sqrt(0.5)]), ("l1", [1.0, 0.5])])
def test_ganqp_values(norm, dist):
    d_real, d_fake = scores()
    real, fake = images()
    delta = [0.8, -2.5]
    expected_d = mean(*(-dl + dl**2 / (2 * 10.0 * d) for dl, d in zip(delta, dist)))
    loss = GANQP(norm=norm)
    check(loss.d_loss(d_real, d_fake, real, fake), expected_d)
    check(loss.g_loss(d_fake, d_real, real, fake), mean(*delta))
    assert loss.g_uses_real and loss.uses_images


def test_ganqp_truncates_to_smaller_batch():
    d_real, d_fake = scores()
    real, fake = images()
    loss = GANQP()
    full = loss.d_loss(d_real[:1], d_fake[:1], real[:1], fake[:1]).total
    assert_close(loss.d_loss(d_real, d_fake[:1], real, fake[:1]).total, full)
    assert_close(full, torch.tensor(-0.8 + 0.64 / 20))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ganqp_all_pairs_is_the_mean_over_every_pairing(norm):
    # pairs="all" with 3 real and 2 fake samples = the mean of the 6 one-pair losses; near pairs stay finite.
    torch.manual_seed(0)
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(2, 1, 2, 2)
    fake[0] = real[1] + 1e-4
    d_real, d_fake = torch.randn(3), torch.randn(2)
    one = GANQP(norm=norm)
    brute = torch.stack([
        one.d_loss(d_real[i:i + 1], d_fake[j:j + 1], real[i:i + 1], fake[j:j + 1]).total
        for i in range(3) for j in range(2)
    ]).mean()
    got = GANQP(norm=norm, pairs="all").d_loss(d_real, d_fake, real, fake).total
    assert torch.isfinite(got)
    assert_close(got, brute)


def test_ganqp_all_pairs_on_a_2d_batch_of_1024_stays_exact():
    # The matmul form of cdist loses a 1e-3 distance at this size (0 gives an inf loss); the exact form must not.
    torch.manual_seed(0)
    real = torch.randn(1024, 2) * 4
    fake = real + 1e-3
    d = GANQP(pairs="all")._all_distances(real, fake)
    assert_close(d.diagonal(), torch.full((1024,), 1e-3), rtol=2e-2, atol=0)


# Every loss conf/loss offers, as its YAML builds it, and the variants its options select.
ALL_LOSSES = {name: instantiate(OmegaConf.load(CONF / f"{name}.yaml")) for name in methods.names("loss")}
ALL_LOSSES |= {"sgan_saturating": SGAN(True), "ganqp_l1": GANQP(norm="l1"), "ganqp_all": GANQP(pairs="all")}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_losses_finite_and_differentiable(name):
    loss = ALL_LOSSES[name]
    d_real = torch.randn(8, requires_grad=True)
    d_fake = torch.randn(8, requires_grad=True)
    real, fake = torch.randn(8, 3, 4, 4), torch.randn(8, 3, 4, 4)
    for terms in (loss.d_loss(d_real, d_fake, real, fake), loss.g_loss(d_fake, d_real.detach(), real, fake)):
        assert terms.total.dim() == 0 and torch.isfinite(terms.total)
        assert terms.parts and all(torch.isfinite(v) and v.dim() == 0 for v in terms.parts.values())
        assert all("/" in k for k in terms.parts)
        (grad,) = torch.autograd.grad(terms.total, d_fake)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def linear_D(*w):
    """D(x) = w·x (flattened), no bias."""
    D = nn.Linear(len(w), 1, bias=False)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([w]))
    return lambda x: D(x.flatten(1)).squeeze(1)


def on(penalty, Dw, real, fake):
    """A penalty on D's input gradients (D's weights are not read: the module argument is None)."""
    return penalty(None, Dw, real, fake)


def batch():
    torch.manual_seed(0)
    return torch.randn(16, 1, 2, 2), torch.randn(16, 1, 2, 2)


def test_gp_linear():
    real, fake = batch()
    unit = linear_D(0.5, 0.5, 0.5, 0.5)  # ‖w‖ = 1
    assert_close(on(GradientPenalty(), unit, real, fake).total, torch.tensor(0.0), atol=1e-6, rtol=0)
    two = linear_D(1.0, 1.0, 1.0, 1.0)  # ‖w‖ = 2 -> 10·(2−1)²
    terms = on(GradientPenalty(), two, real, fake)
    assert_close(terms.total, torch.tensor(10.0))
    assert_close(terms.parts["grad_norm/gp"], torch.tensor(2.0))
    assert set(terms.parts) == {"penalty/gp", "grad_norm/gp"}


def test_gp_one_sided():
    real, fake = batch()
    half = linear_D(0.25, 0.25, 0.25, 0.25)  # ‖w‖ = 0.5
    assert_close(on(GradientPenalty(one_sided=True), half, real, fake).total, torch.tensor(0.0))
    assert_close(on(GradientPenalty(), half, real, fake).total, torch.tensor(10.0 * 0.25))
    two = linear_D(1.0, 1.0, 1.0, 1.0)
    assert_close(on(GradientPenalty(one_sided=True), two, real, fake).total, torch.tensor(10.0))


def test_r1_linear():
    real, fake = batch()
    terms = on(R1(gamma=10.0), linear_D(1.0, 1.0, 1.0, 1.0), real, fake)
    assert_close(terms.total, torch.tensor(10.0 / 2 * 4.0))
    assert_close(terms.parts["penalty/r1"], torch.tensor(20.0))


@pytest.mark.parametrize("at", ["interpolates", "real_fake"])
def test_div_linear(at):
    real, fake = batch()
    terms = on(DivergencePenalty(k=2.0, p=6.0, at=at), linear_D(1.0, 1.0, 1.0, 1.0), real, fake)
    assert_close(terms.total, torch.tensor(2.0 * 2.0**6))
    assert_close(terms.parts["grad_norm/div"], torch.tensor(2.0))


def test_penalties_keep_graph_to_D():
    real, fake = batch()
    D = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    for penalty in (GradientPenalty(), R1(), DivergencePenalty(), DivergencePenalty(at="real_fake")):
        D.zero_grad()
        penalty(D, D, real, fake).total.backward()
        # the last bias does not move ∇ₓD, so it gets no gradient from a penalty
        assert all(torch.isfinite(D[i].weight.grad).all() and D[i].weight.grad.abs().sum() > 0 for i in (1, 3))
    assert not real.requires_grad and not fake.requires_grad


def test_wgan_gp_equals_wgan_plus_gp_constraint():
    torch.manual_seed(1)
    D = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1), nn.Flatten(0))
    real, fake = torch.randn(32, 2), torch.randn(32, 2)

    def d_total(loss, constraint):
        torch.manual_seed(123)
        terms = loss.d_loss(D(real), D(fake), real, fake)
        total = terms.total
        for penalty in constraint.run_penalties(loss):
            total = total + penalty(D, D, real, fake).total
        D.zero_grad()
        total.backward()
        return total.detach(), [p.grad.clone() for p in D.parameters()]

    a, grads_a = d_total(WGANGP(), NoConstraint())
    b, grads_b = d_total(WGAN(), GradientPenaltyConstraint())
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))


def test_bad_values_raise():
    with pytest.raises(GanbenchError):
        GANQP(norm="l3")
    with pytest.raises(GanbenchError):
        GANQP(pairs="some")
    with pytest.raises(GanbenchError):
        WGANDiv(at="middle")
    with pytest.raises(GanbenchError):
        WGANGP(weight=-1.0)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_instantiates(path):
    assert isinstance(instantiate(OmegaConf.load(path)), Loss)


def test_every_loss_class_has_a_yaml():
    """A loss is one class in ganbench/losses.py and one YAML naming it: the suite then runs it everywhere."""
    def subclasses(cls):
        return {s for c in cls.__subclasses__() for s in {c} | subclasses(c)}

    classes = {f"ganbench.losses.{c.__qualname__}" for c in subclasses(Loss) if c.__module__ == "ganbench.losses"}
    assert classes <= set(methods.options("loss").values())
    assert {"sgan", "wgan", "wgan_gp", "hinge", "ganqp", "wgan_div", "lsgan"} <= set(methods.names("loss"))


def test_a_loss_declares_its_published_penalty_and_the_yaml_sets_it():
    assert WGANGP(weight=0.1, one_sided=True).penalty.weight == 0.1 and WGANGP(one_sided=True).penalty.one_sided
    assert isinstance(WGANDiv().penalty, DivergencePenalty) and WGANDiv(k=3.0).penalty.k == 3.0
    assert all(loss.penalty is None for loss in (SGAN(), WGAN(), Hinge(), GANQP(), LSGAN()))
    assert WGANGP().linear_in_critic and WGANDiv().linear_in_critic and not Hinge().linear_in_critic
    assert instantiate(OmegaConf.load(CONF / "wgan_gp.yaml")).penalty.weight == 10.0
