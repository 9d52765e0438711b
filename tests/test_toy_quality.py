"""Toy 2D quality with the documented preset: a well-constrained D covers all of grid25 with high-quality samples."""

from __future__ import annotations

import pytest

from conftest import compose
from ganbench.train import run


@pytest.mark.slow
def test_hinge_sn_covers_grid25(tmp_path):
    """grid25_hinge_sn, seed 0: 25/25 modes and ≥ 90% high-quality samples (PacGAN's bar), 10,000 steps.

    The other grid25 pairs' presets take 3–27 minutes a run: scripts/toy_bar.py checks them, not the suite.
    """
    cfg = compose(["experiment=grid25_hinge_sn", "device=cpu", "progress=false", "ckpt_every=10000",
                   "sample_every=10000", "log_every=2000", "eval_every=10000"])
    assert (cfg.loss._target_, cfg.constraint._target_) == ("ganbench.losses.Hinge", "ganbench.constraints.SpectralNorm")
    metrics = run(cfg, tmp_path)
    assert metrics["modes"] == 25
    assert metrics["hq"] >= 0.90  # measured 0.947
    assert metrics["w1"] < 0.3  # measured 0.212


@pytest.mark.slow
def test_wgan_gp_covers_ring8(tmp_path):
    """ring8_study, wgan_gp, seed 0, 5,000 steps: 8/8 modes and ≥ 90% of samples within 3σ = 0.06 of a mode."""
    cfg = compose(["experiment=ring8_study", "loss=wgan_gp", "constraint=none", "device=cpu", "progress=false",
                   "ckpt_every=5000", "sample_every=5000", "log_every=1000", "eval_every=5000"])
    metrics = run(cfg, tmp_path)
    assert metrics["modes"] == 8
    assert metrics["hq"] >= 0.90  # measured 0.928
    assert metrics["w1"] < 0.2
