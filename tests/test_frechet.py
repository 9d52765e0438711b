"""The Fréchet distance core: closed forms, agreement with the scipy.linalg.sqrtm formula, degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from ganbench.errors import GanbenchError
from ganbench.metrics.frechet import Stats, feature_stats, frechet_distance, frechet_distance_stats


def random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def scipy_fd(mu1, sigma1, mu2, sigma2) -> float:
    """The TTUR / pytorch-fid formula: sqrtm of the non-symmetric product."""
    from scipy import linalg

    mu1, mu2, sigma1, sigma2 = (np.asarray(t, dtype=np.float64) for t in (mu1, mu2, sigma1, sigma2))
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_identical_statistics_give_zero():
    gen = torch.Generator().manual_seed(0)
    for d in (1, 16, 256):
        mu, sigma = torch.randn(d, generator=gen, dtype=torch.float64), random_spd(d, gen)
        fd = frechet_distance(mu, sigma, mu, sigma)
        assert 0.0 <= fd <= 1e-6 * float(sigma.trace())


def test_diagonal_gaussians_match_closed_form():
    # For diagonal covariances FD = ‖μ₁−μ₂‖² + Σ_i (√a_i − √b_i)².
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, -1.0])
    a, b = torch.tensor([1.0, 4.0, 0.25, 9.0]), torch.tensor([4.0, 1.0, 0.25, 0.0])
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())  # 21 + 1 + 1 + 0 + 9
    assert expected == pytest.approx(32.0)
    fd = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert fd == pytest.approx(expected, rel=1e-12)


def test_commuting_full_covariances_match_closed_form():
    # Σ₂ = c² Σ₁ → Tr((Σ₁^½ Σ₂ Σ₁^½)^½) = c Tr Σ₁, so FD = ‖Δμ‖² + (1 − c)² Tr Σ₁.
    gen = torch.Generator().manual_seed(1)
    sigma = random_spd(32, gen)
    mu1, mu2 = torch.zeros(32), torch.full((32,), 0.5)
    fd = frechet_distance(mu1, sigma, mu2, 9.0 * sigma)
    assert fd == pytest.approx(32 * 0.25 + 4.0 * float(sigma.trace()), rel=1e-10)


@pytest.mark.parametrize("d,seed", [(2, 0), (10, 1), (64, 2), (128, 3)])
def test_agrees_with_scipy_sqrtm_formula(d, seed):
    gen = torch.Generator().manual_seed(seed)
    mu1, mu2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    s1, s2 = random_spd(d, gen), random_spd(d, gen)
    expected = scipy_fd(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    # symmetric in its arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)


def test_feature_stats_match_numpy_and_chunking():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1000, 12, generator=gen) * 3 + 100  # a large offset: the two-pass covariance must stay exact
    stats = feature_stats(x, chunk=97)
    assert stats.n == 1000 and stats.mu.dtype == torch.float64 and stats.sigma.dtype == torch.float64
    assert_close(stats.mu, torch.from_numpy(x.double().numpy().mean(0)))
    assert_close(stats.sigma, torch.from_numpy(np.cov(x.double().numpy(), rowvar=False)))
    again = Stats.from_dict(stats.to_dict())
    assert frechet_distance_stats(stats, again) == pytest.approx(0.0, abs=1e-9)


def test_fewer_samples_than_dimensions_is_finite_and_biased_high():
    gen = torch.Generator().manual_seed(5)
    d = 64
    big_a, big_b = (feature_stats(torch.randn(20000, d, generator=gen)) for _ in range(2))
    small_a, small_b = (feature_stats(torch.randn(16, d, generator=gen)) for _ in range(2))
    fd_big, fd_small = frechet_distance_stats(big_a, big_b), frechet_distance_stats(small_a, small_b)
    assert math.isfinite(fd_small) and math.isfinite(fd_big)
    assert fd_small > 10 * fd_big  # same distribution: the rank-deficient estimate is far from 0 (biased high)


def test_mode_collapse_is_finite():
    gen = torch.Generator().manual_seed(6)
    real = feature_stats(torch.randn(500, 32, generator=gen))
    collapsed = feature_stats(torch.ones(500, 32))  # every sample the same: Σ = 0
    assert float(collapsed.sigma.abs().max()) == 0.0
    fd = frechet_distance_stats(real, collapsed)
    # Σ₂ = 0 → FD = ‖Δμ‖² + Tr Σ₁
    expected = float((real.mu - collapsed.mu).square().sum() + real.sigma.trace())
    assert math.isfinite(fd) and fd == pytest.approx(expected, rel=1e-10)
    assert frechet_distance_stats(collapsed, collapsed) == 0.0
    single = feature_stats(torch.ones(1, 32))  # one sample: zero covariance, no division by zero
    assert math.isfinite(frechet_distance_stats(real, single))


def test_bad_inputs_are_one_sentence_errors():
    with pytest.raises(GanbenchError, match="mismatched"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))
    with pytest.raises(GanbenchError, match="non-finite"):
        frechet_distance(torch.tensor([float("nan")]), torch.eye(1), torch.zeros(1), torch.eye(1))
    with pytest.raises(GanbenchError, match="not finite"):
        feature_stats(torch.tensor([[float("inf")], [0.0]]))
