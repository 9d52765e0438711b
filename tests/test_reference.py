"""Reference audit (docs/RESULTS.md "Reference audit"): each method's formula against its authors' code,
with hand-computed numbers, and the GraN properties the audit's verdict rests on."""

import torch
from torch import nn

from ganbench.constraints import R1, DivergencePenalty, GradientPenalty, GradNorm, GraN
from ganbench.losses import GANQP, WGAN


def _pairs():
    """Two real/fake image pairs (1×2×2): pair 0 differs by 1 everywhere, pair 1 by 4 in one pixel."""
    real = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[4.0, 0.0], [0.0, 0.0]]]])
    return real, torch.zeros_like(real)


def test_ganqp_l2_is_bojone_gan_qp_l2():
    # 128/gan_qp_l2.py: d_norm = 10·sqrt(mean((x_r − x_f)²)); L_D = mean(−Δ + 0.5·Δ²/d_norm); L_G = mean(Δ).
    # RMS: pair 0 → 1, pair 1 → sqrt(16/4) = 2.  Δ = (3 − 1, 1 − 2) = (2, −1).
    # L_D = mean(−2 + 0.5·4/10, 1 + 0.5·1/20) = mean(−1.8, 1.025) = −0.3875.
    real, fake = _pairs()
    d_real, d_fake = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    loss = GANQP(lam=10.0, norm="l2")
    torch.testing.assert_close(loss.d_loss(d_real, d_fake, real, fake).total, torch.tensor(-0.3875))
    torch.testing.assert_close(loss.g_loss(d_fake, d_real, real, fake).total, torch.tensor(0.5))


def test_ganqp_l1_is_bojone_gan_qp_l1():
    # 256/ and 512/gan_qp_l1.py: d_norm = 10·mean|x_r − x_f|: pair 0 → 10·1, pair 1 → 10·1.
    # L_D = mean(−2 + 0.5·4/10, 1 + 0.5·1/10) = mean(−1.8, 1.05) = −0.375: the "10·" is λ = 10.
    real, fake = _pairs()
    d_real, d_fake = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])
    loss = GANQP(lam=10.0, norm="l1")
    torch.testing.assert_close(loss.d_loss(d_real, d_fake, real, fake).total, torch.tensor(-0.375))


def _linear_critic():
    """f(x) = 3·x₀ + 4·x₁ + 1: ‖∇f‖ = 5 everywhere."""
    D = nn.Linear(2, 1)
    with torch.no_grad():
        D.weight.copy_(torch.tensor([[3.0, 4.0]]))
        D.bias.fill_(1.0)
    return lambda x: D(x).squeeze(1)


def test_gradient_penalties_match_their_reference_code():
    Dw, x = _linear_critic(), torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # improved_wgan_training gan_cifar.py: LAMBDA·mean((‖∇‖ − 1)²) = 10·16.
    torch.testing.assert_close(GradientPenalty(10.0)(None, Dw, x, x.flip(0)).total, torch.tensor(160.0))
    # musikisomorphie/wgan-div wgan_div.py: LAMBDA·mean((Σ g²)³) = ‖∇‖⁶ = 15,625; k=2 (paper) → 31,250.
    torch.testing.assert_close(DivergencePenalty(k=2.0, p=6.0)(None, Dw, x, x.flip(0)).total, torch.tensor(31250.0))
    # Mescheder et al. 2018 eq. 9: (γ/2)·E‖∇D(x)‖² = 5·25.
    torch.testing.assert_close(R1(10.0)(None, Dw, x, x).total, torch.tensor(125.0))


def test_gran_value_is_the_papers_formula():
    # D̂ = K·f·‖∇f‖/(‖∇f‖² + ε): at (1, 1) f = 8, ‖∇f‖ = 5 → 2·8·5/(25 + 1e-4).
    Dw = GraN(K=2.0, eps=1e-4).wrap(_linear_critic())
    torch.testing.assert_close(Dw(torch.tensor([[1.0, 1.0]])), torch.tensor([80.0 / 25.0001]))


def _two_piece_critic(b: float, s: float):
    """f(x) = x + b for x < 0, s·x + b for x > 0 (a ReLU net: x + b + relu((s − 1)·x)); continuous at 0."""
    return lambda x: (x + b + torch.relu((s - 1) * x)).squeeze(1)


def test_gran_does_not_bound_a_wgan_critic():
    # GraN is K-Lipschitz only piecewise: D̂ = f/‖∇f‖ jumps where the pieces meet, by b·(1 − 1/s) here, so
    # E D̂(real) − E D̂(fake) (the WGAN critic objective) has no upper bound for points 0.02 apart.
    # Real at −0.01: f = 999.99, ‖∇f‖ = 1 → 999.99/1.0001; fake at +0.01: f = 1000.02, ‖∇f‖ = 2 → 2000.04/4.0001.
    f = _two_piece_critic(b=1000.0, s=2.0)
    real, fake = torch.tensor([[-0.01]]), torch.tensor([[0.01]])
    gran = GraN(K=1.0, eps=1e-4).wrap(f)
    gap = gran(real) - gran(fake)
    torch.testing.assert_close(gap, torch.tensor([999.99 / 1.0001 - 2000.04 / 4.0001]))
    assert gap.item() > 499.0
    # GN on the same critic: |D̂| ≤ 1, so the gap stays below 2 (here 999.99/1000.99 − 1000.02/1002.02).
    gn = GradNorm().wrap(f)
    torch.testing.assert_close(gn(real) - gn(fake), torch.tensor([999.99 / 1000.99 - 1000.02 / 1002.02]))


def _wgan_gran_run(K: float, steps: int = 5) -> list[torch.Tensor]:
    """A few Adam steps of wgan + gran (D and G) on a tiny 2D MLP pair; returns every parameter."""
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    Dw, loss = GraN(K=K, eps=1e-4).wrap(lambda x: D(x).squeeze(1)), WGAN()
    for _ in range(steps):
        real, z = torch.randn(32, 2) * 2, torch.randn(32, 2)
        fake = G(z).detach()
        opt_d.zero_grad()
        loss.d_loss(Dw(real), Dw(fake), real, fake).total.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss.g_loss(Dw(G(torch.randn(32, 2)))).total.backward()
        opt_g.step()
    return [p.detach().clone() for p in [*G.parameters(), *D.parameters()]]


def test_gran_K_is_a_no_op_for_wgan_losses_under_adam():
    # D̂ is linear in K and the WGAN losses are linear in D̂, so K scales every gradient; Adam divides the scale out
    # (up to its ε = 1e-8): no K can change what wgan + gran does.
    for p1, p10 in zip(_wgan_gran_run(1.0), _wgan_gran_run(10.0)):
        torch.testing.assert_close(p1, p10, rtol=1e-4, atol=1e-6)
