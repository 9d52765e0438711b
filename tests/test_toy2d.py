"""Toy 2D metrics: mode coverage, high-quality fraction and exact W1 on hand-built point sets."""

import math

import pytest
import torch

from ganbench.metrics.toy2d import grid25_centers, ring8_centers, toy_metrics, w1_distance

STD = 0.05


def test_centres():
    grid = grid25_centers()
    assert grid.shape == (25, 2)
    assert set(grid.flatten().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
    assert len({tuple(p) for p in grid.tolist()}) == 25
    ring = ring8_centers()
    assert ring.shape == (8, 2)
    torch.testing.assert_close(ring.norm(dim=1), torch.full((8,), 2.0))
    torch.testing.assert_close(ring[0], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(ring8_centers(radius=1.0).norm(dim=1), torch.ones(8))


def test_points_on_every_centre_cover_all_modes():
    c = grid25_centers()
    fake = c.repeat(4, 1)
    m = toy_metrics(fake, fake, c, STD)
    assert m == {"modes": 25, "hq": 1.0, "w1": pytest.approx(0.0, abs=1e-12)}


def test_points_on_one_centre_cover_one_mode():
    c = grid25_centers()
    m = toy_metrics(c[7].expand(100, 2), c, c, STD)
    assert m["modes"] == 1
    assert m["hq"] == 1.0


def test_points_far_from_every_centre_are_low_quality():
    c = grid25_centers()
    fake = torch.full((50, 2), 1.0)  # √2 from the four nearest centres, ≫ 3σ
    m = toy_metrics(fake, c, c, STD)
    assert m["hq"] == 0.0
    assert m["modes"] == 0


def test_high_quality_threshold_is_three_sigma():
    c = ring8_centers()
    inside = c[0] + torch.tensor([2.99 * STD, 0.0])
    outside = c[1] + torch.tensor([0.0, 3.01 * STD])
    m = toy_metrics(torch.stack([inside, outside]), c, c, STD)
    assert m["hq"] == 0.5
    assert m["modes"] == 1


def test_mode_rule_counts_a_mode_from_min_count_high_quality_samples():
    c = ring8_centers()
    fake = torch.cat([c[0].expand(3, 2), c[1].expand(2, 2)])
    assert toy_metrics(fake, c, c, STD)["modes"] == 2  # published rule: one sample is enough
    assert toy_metrics(fake, c, c, STD, min_count=3)["modes"] == 1
    assert toy_metrics(fake, c, c, STD, min_count=2)["modes"] == 2


def test_w1_of_a_set_with_itself_is_zero():
    x = torch.randn(300, 2)
    assert w1_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_w1_of_a_shifted_set_is_the_shift_length():
    torch.manual_seed(0)
    x = torch.randn(300, 2)
    v = torch.tensor([0.3, -0.4])
    torch.testing.assert_close(w1_distance(x, x + v), 0.5, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(toy_metrics(x + v, x, ring8_centers(), STD)["w1"], 0.5, rtol=1e-6, atol=1e-6)


def test_w1_with_unequal_sizes():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([[1.0, 0.0]])
    assert w1_distance(x, y) == pytest.approx(1.0)
    assert w1_distance(torch.zeros(3, 2), torch.tensor([[3.0, 4.0]])) == pytest.approx(math.hypot(3, 4))
