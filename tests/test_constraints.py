"""Constraints: bounded properties (SN σ ≈ 1, clip |w| ≤ c, GN |D̂| ≤ 1), hand-computed values, the penalty protocol,
and every constraint conf/constraint offers against every loss conf/loss offers."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.testing import assert_close

from ganbench import methods
from ganbench.constraints import (
    R1,
    Constraint,
    GradientPenalty,
    GradientPenaltyConstraint,
    GradNorm,
    GraN,
    NoConstraint,
    NormalizedCritic,
    Penalty,
    R1Constraint,
    SpectralNorm,
    WeightClip,
)
from ganbench.errors import GanbenchError
from ganbench.losses import GANQP, LSGAN, SGAN, WGAN, WGANGP, Hinge, LossTerms, WGANDiv
from ganbench.step import d_step

CONF = Path(__file__).resolve().parents[1] / "conf"
LOSSES = {name: instantiate(OmegaConf.load(CONF / "loss" / f"{name}.yaml")) for name in methods.names("loss")}
CONSTRAINTS = {name: instantiate(OmegaConf.load(CONF / "constraint" / f"{name}.yaml"))
               for name in methods.names("constraint")}


def mlp_D(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1), nn.Flatten(0)
    )


def test_none_is_identity():
    D = mlp_D()
    c = NoConstraint()
    assert c.prepare(D) is D and c.wrap(D) is D and c.penalties == () and not c.has_after_d_step


def test_clip():
    D = mlp_D()
    with torch.no_grad():
        D[0].weight.mul_(100)
    clip = WeightClip(c=0.01)
    assert clip.has_after_d_step
    clip.after_d_step(D)
    assert all((p.abs() <= 0.01).all() for p in D.parameters())


def test_sn_top_singular_value():
    torch.manual_seed(0)
    D = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 1),
    )
    with torch.no_grad():  # make σ far from 1 before normalising
        for m in D:
            if hasattr(m, "weight"):
                m.weight.mul_(7)
    sn = SpectralNorm()
    assert sn.prepare(D) is D
    sn.prepare(D)  # idempotent: no double parametrization
    D.train()
    for _ in range(20):
        D(torch.randn(4, 3, 8, 8))
    for m in (D[0], D[2], D[4]):
        assert len(m.parametrizations.weight) == 1
        W = m.weight.detach()
        W = W.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else W
        sigma = torch.linalg.matrix_norm(W.reshape(W.shape[0], -1), ord=2)
        assert abs(sigma.item() - 1) < 0.05, (type(m).__name__, sigma)


def test_penalty_constraints():
    (gp,) = GradientPenaltyConstraint(weight=5.0, one_sided=True).penalties
    assert isinstance(gp, GradientPenalty) and gp.weight == 5.0 and gp.one_sided
    (r1,) = R1Constraint(gamma=1.0).penalties
    assert isinstance(r1, R1) and r1.gamma == 1.0


def input_grad_norm(Dw, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(Dw(x).sum(), x)
    return g.flatten(1).norm(dim=1)


def test_gn_bounded_value_and_gradient():
    D = mlp_D()
    Dw = GradNorm().wrap(D)
    x = 3 * torch.randn(2048, 2)
    assert (Dw(x).abs() <= 1).all()
    assert (input_grad_norm(Dw, x) <= 1 + 1e-4).all()
    assert not x.requires_grad  # the caller's tensor is not mutated


def test_gn_gradients_reach_D_and_G():
    D = mlp_D()
    G = nn.Linear(3, 2)
    Dw = GradNorm().wrap(D)
    fake = G(torch.randn(16, 3))
    Hinge().g_loss(Dw(fake), None, None, fake).total.backward()
    assert G.weight.grad.abs().sum() > 0 and torch.isfinite(G.weight.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    assert D[0].weight.grad.abs().sum() > 0


def test_gn_in_d_step_with_gp():
    """D step: outer loss on the wrapped D plus a GP through it (triple-order graph)."""
    D = mlp_D()
    Dw = GradNorm().wrap(D)
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    total = Hinge().d_loss(Dw(real), Dw(fake), real, fake).total + GradientPenalty()(D, Dw, real, fake).total
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    assert D[0].weight.grad.abs().sum() > 0


def test_normalising_constraints_replace_the_loss_penalty():
    loss = WGANGP()
    for c in (GradNorm(), GraN()):
        assert c.run_penalties(loss) == () and c.run_penalties(WGAN()) == ()
    for c in (NoConstraint(), WeightClip(), SpectralNorm()):
        assert c.run_penalties(loss) == (loss.penalty,) and c.run_penalties(WGAN()) == ()
    r1 = R1Constraint()
    assert r1.run_penalties(loss) == (loss.penalty, *r1.penalties)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_which_penalties_run(loss, constraint):
    """The loss's own penalty runs first unless the constraint normalises the critic; the constraint's own after it.
    Whether a constraint normalises the critic is read from its class; its one-line note says what runs."""
    L, C = LOSSES[loss], CONSTRAINTS[constraint]
    own = () if L.penalty is None or isinstance(C, NormalizedCritic) else (L.penalty,)
    assert C.run_penalties(L) == own + tuple(C.penalties)
    note = C.note(L)
    stacked = L.penalty is not None and (bool(C.penalties) or isinstance(C, NormalizedCritic))
    assert (note is not None) == stacked
    if stacked:
        assert note.startswith(f"loss={loss} + constraint={constraint}:") and "\n" not in note
        assert ("not applied" in note) == isinstance(C, NormalizedCritic)


class WeightDecayPenalty(Penalty):
    """A penalty on D's weights: weight · Σ‖W‖²."""

    name = "l2"

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, D, Dw, real, fake):
        total = self.weight * sum(p.square().sum() for p in D.parameters())
        return LossTerms(total, {"penalty/l2": total.detach()})


class WeightDecay(Constraint):
    def __init__(self, weight: float = 0.5):
        self.penalties = (WeightDecayPenalty(weight),)


@pytest.mark.parametrize("wrap", [NoConstraint, GradNorm])
def test_a_penalty_reaches_D_s_weights_under_any_critic(wrap):
    """A constraint can penalise D's weights: d_step hands every penalty the module, also where the loss sees GN's
    wrapper. With the SGD lr 0 the step leaves D as it was: its gradient is the loss's plus weight · 2W."""
    plain, grads_plain, *_ = _one_d_step(WGAN(), wrap())
    out, grads, D, *_ = _one_d_step(WGAN(), type("C", (WeightDecay,), {"wrap": wrap.wrap})())
    expected = 0.5 * sum(p.detach().square().sum() for p in D.parameters())
    assert_close(out.parts["penalty/l2"], expected)
    assert_close(out.total, plain.total + expected)
    for g, g0, p in zip(grads, grads_plain, D.parameters()):
        assert_close(g, g0 + 2 * 0.5 * p.detach())


def _one_d_step(loss, constraint, seed=0):
    """One d_step of an MLP critic; returns (L_D, parts, D's gradients)."""
    D, G = mlp_D(seed), nn.Linear(3, 2)
    Dw = constraint.wrap(D)
    opt = torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: the step leaves D as it was, grads stay readable
    torch.manual_seed(7)
    real, z = torch.randn(32, 2), torch.randn(32, 3)
    out = d_step(G, D, Dw, loss, constraint.run_penalties(loss), constraint, opt, real, z)
    return out, [p.grad.clone() for p in D.parameters()], D, G, real, z


@pytest.mark.parametrize("constraint", [GradNorm, GraN])
@pytest.mark.parametrize("loss", [WGANGP, WGANDiv])
def test_penalty_loss_under_normalising_constraint_is_plain_wgan(loss, constraint):
    """loss=wgan_gp constraint=gn is loss=wgan constraint=gn bit for bit, RNG included (also if the caller passes
    the loss's penalty to d_step)."""
    a, grads_a, *_ = _one_d_step(loss(), constraint())
    rng_a = torch.get_rng_state()
    b, grads_b, *_ = _one_d_step(WGAN(), constraint())
    assert torch.equal(rng_a, torch.get_rng_state())
    assert torch.equal(a.total, b.total) and a.parts.keys() == b.parts.keys()
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))


def test_hinge_gn_equals_wgan_gn():
    """|D̂| < 1 keeps both hinge relus active: hinge + gn is wgan + gn + 2, with the same gradients in D and G."""
    a, grads_a, D, G, real, z = _one_d_step(Hinge(), GradNorm())
    b, grads_b, *_ = _one_d_step(WGAN(), GradNorm())
    assert_close(a.total, b.total + 2)
    for x, y in zip(grads_a, grads_b):
        assert_close(x, y)
    Dw = GradNorm().wrap(D)

    def g_grads(loss):
        G.zero_grad()
        loss.g_loss(Dw(G(z)), None, None, None).total.backward()
        return [p.grad.clone() for p in G.parameters()]

    for x, y in zip(g_grads(Hinge()), g_grads(WGAN())):
        assert_close(x, y)


def test_stacking_note():
    gn_note = GradNorm().note(WGANGP())
    assert gn_note.startswith("loss=wgan_gp + constraint=gn:") and "not applied" in gn_note
    assert "this run is loss=wgan constraint=gn" in gn_note and "loss=wgan_gp constraint=none" in gn_note
    gp_note = GradientPenaltyConstraint().note(WGANGP())
    assert "both added to L_D" in gp_note and "loss=wgan constraint=gp" in gp_note
    assert "div" in R1Constraint().note(WGANDiv()) and "loss=wgan constraint=r1" in R1Constraint().note(WGANDiv())
    assert "loss=wgan constraint=gran" in GraN().note(WGANDiv())
    for loss in (WGANGP(), WGANDiv()):
        for c in (NoConstraint(), WeightClip(), SpectralNorm()):
            assert c.note(loss) is None
    for loss in (SGAN(), WGAN(), Hinge(), LSGAN(), GANQP()):
        for c in (GradNorm(), GraN(), GradientPenaltyConstraint(), R1Constraint(), SpectralNorm()):
            assert c.note(loss) is None
    assert all("\n" not in c.note(WGANGP()) for c in (GradNorm(), GraN(), R1Constraint()))


def test_gn_under_no_grad():
    Dw = GradNorm().wrap(mlp_D())
    with torch.no_grad():
        out = Dw(torch.randn(8, 2))
    assert out.shape == (8,) and not out.requires_grad


def test_gran_linear():
    D = nn.Linear(2, 1)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[3.0, 4.0]]))  # ‖∇f‖ = 5
        D.bias.fill_(0.5)
    Dw = GraN(K=2.0, eps=1e-4).wrap(lambda x: D(x).squeeze(1))
    x = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # f = [3.5, -3.5]
    expected = torch.tensor([2 * 3.5 * 5 / (25 + 1e-4), -2 * 3.5 * 5 / (25 + 1e-4)])
    assert_close(Dw(x), expected)


def test_gran_gradients_flow():
    D = mlp_D()
    Dw = GraN().wrap(D)
    Dw(torch.randn(16, 2)).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())


def test_bad_values_raise():
    for make in (lambda: WeightClip(c=0), lambda: GraN(eps=0), lambda: SpectralNorm(0)):
        with pytest.raises(GanbenchError):
            make()


@pytest.mark.parametrize("name", CONSTRAINTS)
def test_yaml_instantiates(name):
    assert isinstance(CONSTRAINTS[name], Constraint)


def test_every_constraint_class_has_a_yaml():
    """A constraint is one class in ganbench/constraints.py and one YAML naming it: the suite then runs it."""
    def subclasses(cls):
        return {s for c in cls.__subclasses__() for s in {c} | subclasses(c)}

    classes = {f"ganbench.constraints.{c.__qualname__}" for c in subclasses(Constraint)
               if c.__module__ == "ganbench.constraints" and c is not NormalizedCritic}
    assert classes <= set(methods.options("constraint").values())
    assert {"none", "clip", "sn", "gp", "r1", "gn", "gran"} <= set(methods.names("constraint"))


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_pairing_warning_names_gran_with_wgan_type_losses_only(loss, constraint):
    L, C = LOSSES[loss], CONSTRAINTS[constraint]
    warning = C.warning(L)
    if isinstance(C, GraN) and L.linear_in_critic:
        assert warning.startswith(f"loss={loss} + constraint={constraint} cannot train")
        assert warning.endswith("constraint=gn.")
    else:
        assert warning is None


def test_the_wgan_type_losses_are_the_ones_linear_in_the_critic():
    assert {n for n, lo in LOSSES.items() if lo.linear_in_critic} >= {"wgan", "wgan_gp", "wgan_div"}
    assert not any(LOSSES[n].linear_in_critic for n in ("sgan", "hinge", "lsgan", "ganqp"))
    assert GraN().warning(WGANGP()).startswith("loss=wgan_gp + constraint=gran cannot train")
