"""Constraints: bounded properties (SN σ ≈ 1, clip |w| ≤ c, GN |D̂| ≤ 1) and hand-computed values."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.testing import assert_close

from ganbench.constraints import (
    Constraint,
    GradientPenaltyConstraint,
    GradNorm,
    GraN,
    NoConstraint,
    R1Constraint,
    SpectralNorm,
    WeightClip,
    pairing_warning,
    stacking_note,
)
from ganbench.errors import GanbenchError
from ganbench.losses import GANQP, LSGAN, R1, SGAN, WGAN, WGANGP, GradientPenalty, Hinge, WGANDiv
from ganbench.step import d_step

CONF = Path(__file__).resolve().parents[1] / "conf" / "constraint"


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
    total = Hinge().d_loss(Dw(real), Dw(fake), real, fake).total + GradientPenalty()(Dw, real, fake).total
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    assert D[0].weight.grad.abs().sum() > 0


def test_normalising_constraints_replace_the_loss_penalty():
    gp = GradientPenalty()
    for c in (GradNorm(), GraN()):
        assert c.normalizes_critic and c.run_penalties((gp,)) == ()
    for c in (NoConstraint(), WeightClip(), SpectralNorm()):
        assert not c.normalizes_critic and c.run_penalties((gp,)) == (gp,)
    r1 = R1Constraint()
    assert r1.run_penalties((gp,)) == (gp, *r1.penalties)


def _one_d_step(loss, constraint, seed=0):
    """One d_step of an MLP critic; returns (L_D, parts, D's gradients)."""
    D, G = mlp_D(seed), nn.Linear(3, 2)
    Dw = constraint.wrap(D)
    opt = torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: the step leaves D as it was, grads stay readable
    torch.manual_seed(7)
    real, z = torch.randn(32, 2), torch.randn(32, 3)
    out = d_step(G, D, Dw, loss, constraint.run_penalties(loss.penalties), constraint, opt, real, z)
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
    gn_note = stacking_note(WGANGP(), GradNorm())
    assert gn_note.startswith("loss=wgan_gp + constraint=gn:") and "not applied" in gn_note
    assert "this run is loss=wgan constraint=gn" in gn_note and "loss=wgan_gp constraint=none" in gn_note
    gp_note = stacking_note(WGANGP(), GradientPenaltyConstraint())
    assert "both added to L_D" in gp_note and "loss=wgan constraint=gp" in gp_note
    assert "div" in stacking_note(WGANDiv(), R1Constraint()) and "loss=wgan constraint=r1" in stacking_note(
        WGANDiv(), R1Constraint())
    assert "loss=wgan constraint=gran" in stacking_note(WGANDiv(), GraN())
    for loss in (WGANGP(), WGANDiv()):
        for c in (NoConstraint(), WeightClip(), SpectralNorm()):
            assert stacking_note(loss, c) is None
    for loss in (SGAN(), WGAN(), Hinge(), LSGAN(), GANQP()):
        for c in (GradNorm(), GraN(), GradientPenaltyConstraint(), R1Constraint(), SpectralNorm()):
            assert stacking_note(loss, c) is None
    assert all("\n" not in stacking_note(WGANGP(), c) for c in (GradNorm(), GraN(), R1Constraint()))


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


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_instantiates(path):
    assert isinstance(instantiate(OmegaConf.load(path)), Constraint)


def test_yaml_set_complete():
    assert {p.stem for p in CONF.glob("*.yaml")} == {"none", "clip", "sn", "gp", "r1", "gn", "gran"}


@pytest.mark.parametrize("loss", ["wgan", "wgan_gp", "wgan_div", "hinge", "sgan"])
@pytest.mark.parametrize("constraint", ["gran", "gn"])
def test_pairing_warning_names_gran_with_wgan_type_losses_only(loss, constraint):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    L = instantiate(OmegaConf.load(conf / "loss" / f"{loss}.yaml"))
    C = instantiate(OmegaConf.load(conf / "constraint" / f"{constraint}.yaml"))
    warning = pairing_warning(L, C)
    if constraint == "gran" and loss.startswith("wgan"):
        assert warning.startswith(f"loss={loss} + constraint=gran cannot train") and warning.endswith("constraint=gn.")
    else:
        assert warning is None
