"""Improved precision/recall (Kynkäänniemi et al. 2019): hand-checked cases and torch-fidelity's implementation."""

from __future__ import annotations

import pytest
import torch

from ganbench.errors import GanbenchError
from ganbench.metrics.prc import knn_radii, precision_recall


def test_radii_are_kth_neighbour_distances_by_hand():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # neighbours of 0: 1, 3, 7; of 1: 0 (1), 3 (2), 7 (6); of 3: 1 (2), 0 (3), 7 (4); of 7: 3, 6, 7
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_hand_computed_precision_and_recall():
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])   # k=1 radii: 1, 1, 1, 1, 1
    fake = torch.tensor([[0.5], [1.9], [5.0], [20.0]])            # k=1 radii: 1.4, 1.4, 3.1, 15
    # precision: 0.5 and 1.9 lie within 1 of a real point, 5.0 and 20.0 do not -> 2/4
    # recall: 0, 1, 2 within 1.4 of 0.5 or 1.9; 10 and 11 within 15 of 20 -> 5/5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(fake, real, k=1) == (1.0, 0.5)  # the roles swap


def test_identical_collapsed_and_disjoint_sets():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(500, 16, generator=gen)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    collapsed = real[:1] + 0.01 * torch.randn(500, 16, generator=gen)  # all fakes near one real point
    p, r = precision_recall(real, collapsed)
    assert p == 1.0 and r < 0.02
    far = torch.randn(500, 16, generator=gen) + 100
    assert precision_recall(real, far) == (0.0, 0.0)


def test_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(300, 8, generator=gen), torch.randn(250, 8, generator=gen) * 1.3 + 0.2
    assert precision_recall(real, fake, chunk=7) == precision_recall(real, fake, chunk=4096)


def test_equals_torch_fidelity_implementation():
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    gen = torch.Generator().manual_seed(2)
    for shift in (0.0, 0.3, 1.0):
        real = torch.randn(400, 32, generator=gen)
        fake = torch.randn(350, 32, generator=gen) * 0.8 + shift
        ours = precision_recall(real, fake, k=3)
        # torch-fidelity's convention: features_1 = generated, features_2 = real
        theirs = prc.calculate_precision_recall_full(fake, real, neighborhood=3)
        assert ours == pytest.approx(theirs, abs=1e-12), (shift, ours, theirs)
        assert 0 < ours[0] < 1 or shift == 0.0


def test_too_few_samples_and_mismatched_features_are_clear_errors():
    with pytest.raises(GanbenchError, match="needs more than 3 samples"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2))
    with pytest.raises(GanbenchError, match="mismatched features"):
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 3))
