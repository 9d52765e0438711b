"""Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991) of two feature sets.

Each set's manifold is the union of balls around its points, the radius of a point being the distance to its
k-th nearest neighbour in its own set (the point itself excluded; k = 3 as in the paper). Then

    precision = fraction of generated features inside the real manifold   (are the samples realistic?)
    recall    = fraction of real features inside the generated manifold   (is the data covered?)

A point lies inside when its distance to some ball centre is ≤ that ball's radius. Same rule and tie handling as
torch-fidelity's ``calculate_precision_recall_full`` (equality is tested). The paper computes it on VGG-16 fc2
features of ImageNet images; ganbench computes it on the ``fd_classifier`` feature net (``prc_classifier``), so its
numbers describe the dataset's own classifier space and are not comparable with published P/R values.
Distances are computed in float32 chunks of ``chunk`` rows: memory O(chunk · n), never n².
"""

from __future__ import annotations

import torch

from ganbench.errors import GanbenchError


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Distance from every row of ``x`` to its k-th nearest other row."""
    if len(x) <= k:
        raise GanbenchError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(x)}.")
    return torch.cat([torch.cdist(part, x).kthvalue(k + 1, dim=1).values for part in x.split(chunk)])


def coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> float:
    """Fraction of ``points`` within ``radii[j]`` of some ``centres[j]``."""
    inside = [(torch.cdist(part, centres) <= radii).any(dim=1) for part in points.split(chunk)]
    return torch.cat(inside).float().mean().item()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 2048) -> tuple[float, float]:
    """(precision, recall) of ``fake`` against ``real`` features, both (n, d)."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise GanbenchError(f"precision/recall of mismatched features {tuple(real.shape)} and {tuple(fake.shape)}.")
    real, fake = real.float(), fake.float()
    precision = coverage(fake, real, knn_radii(real, k, chunk), chunk)
    recall = coverage(real, fake, knn_radii(fake, k, chunk), chunk)
    return precision, recall
