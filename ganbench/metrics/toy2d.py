"""Exact metrics for the 2D toy benchmarks ring8 and grid25 (VEEGAN, arXiv 1705.07761; PacGAN, arXiv 1712.04086).

Protocol of VEEGAN's synthetic-data experiments, which PacGAN reuses: draw 2,500 samples; a sample is *high
quality* if it lies within 3σ of its nearest mode centre; a mode is *captured* when it is the nearest centre of at
least one high-quality sample. The exact W1 between generated and real samples adds what those two miss (mass in
the right proportions), computed with Python Optimal Transport.
"""

import math

import ot  # Python Optimal Transport: the exact EMD solver behind w1
import torch

from ganbench.errors import GanbenchError


def ring8_centers(radius: float = 2.0) -> torch.Tensor:
    """(8, 2) centres ``radius·(cos 2πk/8, sin 2πk/8)``, k = 0..7 (the first on the positive x axis)."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return (radius * torch.stack([angle.cos(), angle.sin()], dim=1)).float()


def grid25_centers() -> torch.Tensor:
    """(25, 2) centres at {−4, −2, 0, 2, 4}², row-major in x then y."""
    v = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
    return torch.cartesian_prod(v, v)


def w1_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact W1 = min over couplings π of Σ π_ij ‖x_i − y_j‖₂ between uniform point clouds.

    Network simplex of POT (``ot.emd2``) on a Euclidean cost matrix, in float64.
    """
    x = x.detach().cpu().double().numpy()
    y = y.detach().cpu().double().numpy()
    a = ot.unif(len(x))
    b = ot.unif(len(y))
    cost = ot.dist(x, y, metric="euclidean")
    # the network simplex needs more than POT's default 100k iterations at 2,500 × 2,500 points
    return float(ot.emd2(a, b, cost, numItermax=10_000_000))


def toy_metrics(
    fake: torch.Tensor, real: torch.Tensor, centers: torch.Tensor, std: float, min_count: int = 1
) -> dict:
    """Mode coverage, sample quality and W1 of ``fake`` (N, 2) against ``real`` (M, 2); PacGAN uses N = M = 2,500.

    - ``hq``: fraction of fake samples with ‖x − c_nearest‖₂ < 3·std (VEEGAN/PacGAN "high quality").
    - ``modes``: number of centres that are the nearest centre of ≥ ``min_count`` high-quality samples. The default
      ``min_count=1`` is the published rule. VEEGAN (arXiv 1705.07761, synthetic experiments): "we report the number
      of modes captured as the number of mixture components whose mean is nearest to at least one high quality
      sample". PacGAN's reference code (fjxmlzn/PacGAN, ``synthetic_data_experiments/PacGAN/pacgan/extensions.py``,
      ``MetricLogger``) does the same: each sample goes to its nearest mode if closer than 3σ, and mode coverage is
      the number of modes with a non-zero count. ``min_count > 1`` gives a stricter, non-standard variant.
    - ``w1``: exact earth mover's distance with Euclidean ground cost, uniform weights (:func:`w1_distance`).
    """
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != centers.shape[1] or real.shape[1] != centers.shape[1]:
        raise GanbenchError(
            f"toy metrics need (N, {centers.shape[1]}) point sets; got fake {tuple(fake.shape)} and real "
            f"{tuple(real.shape)} — use them with the 2D toy datasets only."
        )
    centers = centers.detach().cpu().double()
    dist, nearest = torch.cdist(fake.detach().cpu().double(), centers).min(dim=1)
    high_quality = dist < 3 * std
    per_mode = torch.bincount(nearest[high_quality], minlength=len(centers))
    return {
        "modes": int((per_mode >= min_count).sum()),
        "hq": high_quality.double().mean().item(),
        "w1": w1_distance(fake, real),
    }
