"""WGAN with weight clipping at its published setting (`loss=wgan constraint=clip recipe=paper`) keeps a critic
that can tell digits apart, so G's samples stay distinct.

A clipped critic without BatchNorm is close to linear on the data: its input gradient points the same way at every
digit (mean pairwise cosine about 0.98 after a few hundred critic steps), so every G step moves all samples the same
way and G collapses to one glyph (docs/RESULTS.md, "Published systems at their own settings"). The WGAN code's
critic has BatchNorm after every conv but the first, which the clip recipe turns on. The test trains both critics
in a short run of the recipe (three G steps, each after a burst of 100 critic steps) and reads the alignment and the
spread of G's samples from the checkpoints.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from ganbench.build import build
from ganbench.train import run


def short_run(tmp_path, *extra: str):
    cfg = compose(["loss=wgan", "constraint=clip", "recipe=paper", "device=cpu", "steps=3", "progress=false",
                   "log_every=3", "sample_every=3", "eval_every=3", "ckpt_every=3", "metrics.num_fake=64",
                   *extra])
    run(cfg, tmp_path)
    r = build(cfg, torch.device("cpu"))
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    r.G.load_state_dict(state["G"])
    r.D.load_state_dict(state["D"])
    return r


def alignment(D, x: torch.Tensor) -> float:
    """Mean pairwise cosine of ∇ₓD(x) over the batch (D in training mode, as the G step sees it)."""
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    g = torch.nn.functional.normalize(g.flatten(1), dim=1)
    return (g @ g.T)[~torch.eye(len(g), dtype=torch.bool)].mean().item()


def spread(r) -> float:
    """Mean pairwise distance of 256 samples of G over that of 256 real digits (0: one image)."""
    with torch.no_grad():
        fake = r.G(r.G.sample_z(256)).flatten(1)
    real = r.dataset.sample(256).flatten(1)
    return (torch.pdist(fake).mean() / torch.pdist(real).mean()).item()


@pytest.mark.slow
def test_the_clip_system_critic_separates_digits_and_samples_stay_apart(tmp_path):
    torch.manual_seed(0)
    published = short_run(tmp_path / "bn")
    linear = short_run(tmp_path / "no_bn", "model.discriminator.batchnorm=false")
    torch.manual_seed(1)
    digits = published.dataset.sample(256)
    a_published, a_linear = alignment(published.D, digits), alignment(linear.D, digits)
    assert a_linear > 0.95  # the cause: without BatchNorm the clipped critic is nearly linear on the data
    assert a_published < 0.85, a_published
    assert spread(published) > 0.1  # distinct samples (one image repeated: 0; the initial G: about 0.2)
