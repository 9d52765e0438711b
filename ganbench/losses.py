"""GAN losses: L_D and L_G on D's scores, one or two lines each with their formula.

Convention: D outputs a raw score per sample, higher = more real; ``E`` is the batch mean. Losses are pure: they
never own G, D or optimizers and never call ``backward()`` (``step.py`` does, once). Every method returns a
:class:`LossTerms`; ``parts`` hold detached, path-style named scalars for logging. A loss published with a penalty
(WGAN-GP, WGAN-div) declares it as ``penalty``; the penalty lives in ``constraints.py`` and the constraint decides
whether it runs (see that module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ganbench.constraints import DivergencePenalty, GradientPenalty, Penalty
from ganbench.terms import LossTerms, check, summed

__all__ = ["GANQP", "LSGAN", "SGAN", "WGAN", "WGANDiv", "WGANGP", "Hinge", "Loss", "LossTerms"]


# Losses --------------------------------------------------------------------------------------------------------


class Loss:
    """Base class: ``d_loss`` and ``g_loss`` on scores of shape (N,)."""

    penalty: Penalty | None = None  # the penalty the loss was published with; the constraint decides if it runs
    linear_in_critic: bool = False  # L_D is linear in D's scores (WGAN-type): any growth of the score gap pays
    g_uses_real: bool = False  # the loop passes d_real (detached) to g_loss
    uses_images: bool = False  # the loss reads the real/fake images, not only the scores

    def d_loss(self, d_real: Tensor, d_fake: Tensor, real: Tensor, fake: Tensor) -> LossTerms:
        raise NotImplementedError

    def g_loss(self, d_fake: Tensor, d_real: Tensor | None, real: Tensor | None, fake: Tensor) -> LossTerms:
        raise NotImplementedError


class SGAN(Loss):
    """Standard GAN, Goodfellow et al. 2014, arXiv 1406.2661 (SN-GAN arXiv 1802.05957 eq. 15).

    L_D = E softplus(−D(x)) + E softplus(D(G(z))).
    L_G = E softplus(−D(G(z))) (non-saturating, default) or, with ``saturating=True``, the minimax cost
    E log(1 − σ(D(G(z)))) = −E softplus(D(G(z))).
    """

    def __init__(self, saturating: bool = False):
        self.saturating = saturating

    def d_loss(self, d_real, d_fake, real, fake):
        return summed({"d/real": F.softplus(-d_real).mean(), "d/fake": F.softplus(d_fake).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        g = -F.softplus(d_fake).mean() if self.saturating else F.softplus(-d_fake).mean()
        return summed({"g/fake": g})


class WGAN(Loss):
    """Wasserstein GAN, Arjovsky et al. 2017, arXiv 1701.07875: L_D = E D(G(z)) − E D(x), L_G = −E D(G(z)).

    Needs a Lipschitz constraint (clip, sn, gp, gn, ...) to be meaningful.
    """

    linear_in_critic = True

    def d_loss(self, d_real, d_fake, real, fake):
        return summed({"d/real": -d_real.mean(), "d/fake": d_fake.mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return summed({"g/fake": -d_fake.mean()})


class WGANGP(WGAN):
    """WGAN-GP, Gulrajani et al. 2017, arXiv 1704.00028: WGAN + weight·E(‖∇D(x̂)‖₂ − 1)² on interpolates.

    The WGAN loss declaring :class:`~ganbench.constraints.GradientPenalty`: the same run as ``loss=wgan
    constraint=gp``, bit for bit. Defaults: weight=10, one_sided=False. A constraint that normalises the critic
    (``constraint=gn`` or ``gran``) replaces the penalty: the run is ``loss=wgan`` with that constraint.
    """

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        self.penalty = GradientPenalty(weight, one_sided)


class WGANDiv(WGAN):
    """WGAN-div, Wu et al. ECCV 2018, arXiv 1712.01026: the WGAN loss declaring k·E‖∇D(x̂)‖^p.

    See :class:`~ganbench.constraints.DivergencePenalty`. Defaults: k=2, p=6, at="interpolates". ``constraint=gn``
    or ``gran`` replace the penalty (as for WGAN-GP).
    """

    def __init__(self, k: float = 2.0, p: float = 6.0, at: str = "interpolates"):
        self.penalty = DivergencePenalty(k, p, at)


class Hinge(Loss):
    """Hinge loss, Lim & Ye 2017, arXiv 1705.02894 (SN-GAN eq. 16-17).

    L_D = E relu(1 − D(x)) + E relu(1 + D(G(z))), L_G = −E D(G(z)).
    With ``constraint=gn`` (|D̂| < 1) both relus are always active, so hinge + gn = wgan + gn + 2, step for step.
    """

    def d_loss(self, d_real, d_fake, real, fake):
        return summed({"d/real": F.relu(1 - d_real).mean(), "d/fake": F.relu(1 + d_fake).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return summed({"g/fake": -d_fake.mean()})


class LSGAN(Loss):
    """Least-squares GAN, Mao et al. 2017, arXiv 1611.04076, on raw scores (StudioGAN convention).

    L_D = ½E(D(x) − 1)² + ½E D(G(z))², L_G = ½E(D(G(z)) − 1)².
    """

    def d_loss(self, d_real, d_fake, real, fake):
        return summed({"d/real": 0.5 * (d_real - 1).square().mean(), "d/fake": 0.5 * d_fake.square().mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return summed({"g/fake": 0.5 * (d_fake - 1).square().mean()})


class GANQP(Loss):
    """GAN-QP, Su 2018, arXiv 1811.07296 (bojone/gan-qp).

    L_D = E[−Δ + Δ²/(2λ·d(x_r, x_f))], Δ = D(x_r) − D(x_f); L_G = E[Δ] = E D(x_r) − E D(x_f).
    d is the per-pair RMS over pixels sqrt(mean((x_r − x_f)²)) for ``norm="l2"``, mean |x_r − x_f| for "l1".
    ``pairs="index"`` pairs real i with fake i; if the batch sizes differ, both are truncated to the smaller one.
    ``pairs="all"`` averages over all N_r × N_f real/fake pairings: the same expectation over independent pairs with
    far less noise, at the cost of an N_r × N_f distance matrix (cheap for 2D toys, fine for image batches of 64).
    No Lipschitz constraint is needed. Defaults: lam=10, norm="l2", pairs="index".

    Both norms are the reference code's exactly: its ``d_norm = 10·sqrt(mean((x_r − x_f)²))`` (128/gan_qp_l2.py)
    and ``10·mean(|x_r − x_f|)`` (256/ and 512/gan_qp_l1.py, and 128/gan_gp_l1.py, a GAN-QP L1 despite its name)
    are λ·d with λ = 10 (0.5·Δ²/(10·d) = Δ²/(2λd)). The default follows the 128 px L2 file (and ganbench's tuned
    toy presets); the author's later files use ``norm="l1"``. 128/gan_qp_l2.py divides a (N, 1) Δ² by a (N,)
    distance, which broadcasts to the N×N mean of Δ_i²/d_j, i.e. mean(Δ²)·mean(1/d): index-paired, with the
    distances crossed (a bug, not ``pairs="all"``); its later files (``d_loss[:, 0]``) and ganbench's default pair
    by index. ``pairs="all"`` is ganbench's own lower-variance estimate of the paper's expectation, not the authors'.
    """

    g_uses_real = True
    uses_images = True
    _NORMS = ("l2", "l1")
    _PAIRS = ("index", "all")

    def __init__(self, lam: float = 10.0, norm: str = "l2", pairs: str = "index"):
        check(norm in self._NORMS, f"ganqp norm must be one of {self._NORMS}, got {norm!r}.")
        check(pairs in self._PAIRS, f"ganqp pairs must be one of {self._PAIRS}, got {pairs!r}.")
        check(lam > 0, f"ganqp lam must be > 0, got {lam}.")
        self.lam, self.norm, self.pairs = lam, norm, pairs

    def _distance(self, real: Tensor, fake: Tensor) -> Tensor:
        diff = (real - fake).detach().flatten(1)
        return diff.square().mean(1).sqrt() if self.norm == "l2" else diff.abs().mean(1)

    def _all_distances(self, real: Tensor, fake: Tensor) -> Tensor:
        """(N_r, N_f) matrix of :meth:`_distance` over every real/fake pairing."""
        real, fake = real.detach().flatten(1), fake.detach().flatten(1)
        p = 2.0 if self.norm == "l2" else 1.0
        dims = real.shape[1]
        # Exact differences, not the matmul expansion: that rounds near pairs to 0 and the quadratic term to inf.
        dist = torch.cdist(real, fake, p=p, compute_mode="donot_use_mm_for_euclid_dist")
        return dist / (math.sqrt(dims) if self.norm == "l2" else dims)

    def d_loss(self, d_real, d_fake, real, fake):
        if self.pairs == "all":
            delta = d_real.reshape(-1, 1) - d_fake.reshape(1, -1)
            dist = self._all_distances(real, fake)
        else:
            n = min(len(d_real), len(d_fake))
            delta = d_real.reshape(-1)[:n] - d_fake.reshape(-1)[:n]
            dist = self._distance(real[:n], fake[:n])
        return summed({"d/linear": -delta.mean(), "d/quadratic": (delta.square() / (2 * self.lam * dist)).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        if d_real is None:
            raise ValueError("GANQP.g_loss needs d_real (g_uses_real=True).")
        return summed({"g/real": d_real.mean(), "g/fake": -d_fake.mean()})
