"""The Fréchet distance between two Gaussians fitted to feature sets: the core of FID and ``fd_classifier``.

    FD = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr((Σ₁^½ Σ₂ Σ₁^½)^½)

(Dowson & Landau 1982; Heusel et al. 2017, arXiv 1706.08500, eq. 6). ``Tr((Σ₁Σ₂)^½)`` of the usual form equals
``Tr((Σ₁^½ Σ₂ Σ₁^½)^½)``: Σ₁Σ₂ and Σ₁^½Σ₂Σ₁^½ are similar matrices. The second form is symmetric positive
semi-definite, so both square roots come from *symmetric* eigendecompositions (``eigh``) in float64, with eigenvalues
that round-off pushed below zero clamped to 0. Unlike ``scipy.linalg.sqrtm`` of the non-symmetric Σ₁Σ₂ (what
pytorch-fid and TTUR do), this never returns complex values, never needs an ε·I retry and is never NaN for finite
statistics; on well-conditioned full-rank inputs the two agree to ~1e-15 relative (float64).

Rank-deficient covariances (fewer samples than feature dimensions, or a mode-collapsed generator whose samples are
all equal, Σ = 0) are valid inputs: the formula is then still the Fréchet distance of the two (degenerate) Gaussians
and the result is a finite number ≥ 0. With few samples it is biased high (the bias of FID shrinks like 1/N;
Chong & Forsyth 2020, arXiv 1911.07023), so compare numbers only at equal sample counts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ganbench.errors import GanbenchError


@dataclass
class Stats:
    """Mean ``mu`` (d,), covariance ``sigma`` (d, d) — both float64 on the CPU — and the sample count ``n``."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int

    def to_dict(self) -> dict:
        """Tensors and an int only: safe for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {"mu": self.mu, "sigma": self.sigma, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        return cls(d["mu"].double(), d["sigma"].double(), int(d["n"]))


def feature_stats(features: torch.Tensor, chunk: int = 4096) -> Stats:
    """Mean and unbiased covariance (divisor n − 1, as ``numpy.cov``) of ``features`` (n, d), in float64.

    Two passes (mean, then centred products) in chunks of ``chunk`` rows, so 50k × 2048 features never need a
    full float64 copy. ``n = 1`` gives a zero covariance.
    """
    if features.ndim != 2 or len(features) == 0:
        raise GanbenchError(f"feature statistics need a non-empty (n, d) matrix, got shape {tuple(features.shape)}.")
    features = features.detach().cpu()
    n, d = features.shape
    mu = torch.zeros(d, dtype=torch.float64)
    for block in features.split(chunk):
        mu += block.double().sum(0)
    mu /= n
    sigma = torch.zeros(d, d, dtype=torch.float64)
    for block in features.split(chunk):
        centred = block.double() - mu
        sigma += centred.T @ centred
    sigma /= max(n - 1, 1)
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise GanbenchError("features contain NaN or Inf; the images they come from are not finite.")
    return Stats(mu, sigma, n)


@contextlib.contextmanager
def one_cpu_thread():
    """Run torch's CPU kernels on one thread inside the block; the process's thread count is restored afterwards.

    Why: on a busy 2-core machine, eigh of a 256×256 matrix took 5 s with two OpenMP threads and 0.01 s with one
    (spin-waiting threads), and small-batch conv nets show the same. One thread also makes CPU results independent
    of the machine's core count.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix; negative round-off eigenvalues are clamped to 0."""
    eigvals, eigvecs = torch.linalg.eigh((a + a.T) / 2)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2), computed in float64 on the CPU; finite and ≥ 0 (see module)."""
    mu1, mu2 = (torch.as_tensor(m).detach().cpu().double().reshape(-1) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s).detach().cpu().double() for s in (sigma1, sigma2))
    d = mu1.numel()
    if mu2.numel() != d or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise GanbenchError(f"Fréchet distance of mismatched statistics: means {mu1.numel()} and {mu2.numel()}, "
                            f"covariances {tuple(sigma1.shape)} and {tuple(sigma2.shape)}.")
    for t in (mu1, mu2, sigma1, sigma2):
        if not torch.isfinite(t).all():
            raise GanbenchError("Fréchet distance of non-finite statistics (NaN or Inf in the features).")
    with one_cpu_thread():
        root1 = _sqrt_psd(sigma1)
        inner = root1 @ sigma2 @ root1
        trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(float(fd), 0.0)  # ≥ 0 in exact arithmetic; round-off may leave about -1e-12 · Tr Σ


def frechet_distance_stats(a: Stats, b: Stats) -> float:
    """:func:`frechet_distance` of two :class:`Stats`."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
