"""GAN losses and the gradient penalties they share with constraints.

Convention: D outputs a raw score per sample, higher = more real; ``E`` is the batch mean. Losses and penalties
are pure: they never own G, D or optimizers and never call ``backward()`` (``step.py`` does, once). Every method
returns a :class:`LossTerms`; ``parts`` hold detached, path-style named scalars for logging.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ganbench.errors import GanbenchError

Critic = Callable[[Tensor], Tensor]


@dataclass
class LossTerms:
    """A differentiable scalar ``total`` and named scalar ``parts`` for logging (e.g. ``"d/real"``)."""

    total: Tensor
    parts: dict[str, Tensor]


def _terms(parts: dict[str, Tensor]) -> LossTerms:
    """Total = sum of the parts (in insertion order); parts are stored detached."""
    total = sum(parts.values())
    return LossTerms(total, {k: v.detach() for k, v in parts.items()})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise GanbenchError(message)


def _requiring_grad(x: Tensor) -> Tensor:
    """``x`` itself if it already requires grad (keeps the graph to G), else a detached copy that does."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def input_grad(Dw: Critic, x: Tensor) -> tuple[Tensor, Tensor]:
    """Scores ``Dw(x)`` and their per-sample input gradient flattened to (N, -1), with ``create_graph=True``."""
    x = _requiring_grad(x)
    out = Dw(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return out, grad.flatten(1)


def _interpolates(real: Tensor, fake: Tensor) -> Tensor:
    """x̂ = εx + (1−ε)fake, ε~U[0,1] per sample: exactly one ``torch.rand`` call on the global RNG."""
    eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
    return eps * real + (1 - eps) * fake


# Penalties -----------------------------------------------------------------------------------------------------


class Penalty:
    """A regularizer of D added to L_D: ``penalty(Dw, real, fake) -> LossTerms`` (fake is already detached)."""

    name: str = ""

    def __call__(self, Dw: Critic, real: Tensor, fake: Tensor) -> LossTerms:
        raise NotImplementedError


class GradientPenalty(Penalty):
    """WGAN-GP penalty, Gulrajani et al. 2017, arXiv 1704.00028.

    weight · E(‖∇D(x̂)‖₂ − 1)² on x̂ = εx + (1−ε)G(z), ε~U[0,1] per sample; ``one_sided`` uses
    max(0, ‖∇D(x̂)‖₂ − 1)². Defaults: weight=10, one_sided=False.
    """

    name = "gp"

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        _check(weight >= 0, f"gradient penalty weight must be >= 0, got {weight}.")
        self.weight, self.one_sided = weight, one_sided

    def __call__(self, Dw: Critic, real: Tensor, fake: Tensor) -> LossTerms:
        _, grad = input_grad(Dw, _interpolates(real, fake))
        norm = grad.norm(dim=1)
        gap = (norm - 1).clamp_min(0) if self.one_sided else norm - 1
        total = self.weight * gap.square().mean()
        return LossTerms(total, {"penalty/gp": total.detach(), "grad_norm/gp": norm.detach().mean()})


class R1(Penalty):
    """R1 penalty, Mescheder et al. 2018, arXiv 1801.04406: (γ/2) E‖∇D(x)‖² on real samples. Default γ=10."""

    name = "r1"

    def __init__(self, gamma: float = 10.0):
        _check(gamma >= 0, f"r1 gamma must be >= 0, got {gamma}.")
        self.gamma = gamma

    def __call__(self, Dw: Critic, real: Tensor, fake: Tensor) -> LossTerms:
        _, grad = input_grad(Dw, real)
        sq = grad.square().sum(dim=1)
        total = self.gamma / 2 * sq.mean()
        return LossTerms(total, {"penalty/r1": total.detach(), "grad_norm/r1": sq.detach().sqrt().mean()})


class DivergencePenalty(Penalty):
    """WGAN-div penalty, Wu et al. ECCV 2018, arXiv 1712.01026: k · E‖∇D(x̂)‖^p.

    ``at="interpolates"`` (official TF code): x̂ = εx + (1−ε)G(z), ε~U[0,1] per sample.
    ``at="real_fake"`` (bojone Keras code): (k/2)·(E‖∇D(x)‖^p + E‖∇D(G(z))‖^p).
    Defaults: k=2, p=6, at="interpolates".
    """

    name = "div"
    _AT = ("interpolates", "real_fake")

    def __init__(self, k: float = 2.0, p: float = 6.0, at: str = "interpolates"):
        _check(at in self._AT, f"wgan_div 'at' must be one of {self._AT}, got {at!r}.")
        _check(k >= 0 and p > 0, f"wgan_div needs k >= 0 and p > 0, got k={k}, p={p}.")
        self.k, self.p, self.at = k, p, at

    def _sq_norms(self, Dw: Critic, x: Tensor) -> Tensor:
        return input_grad(Dw, x)[1].square().sum(dim=1)

    def __call__(self, Dw: Critic, real: Tensor, fake: Tensor) -> LossTerms:
        if self.at == "interpolates":
            sq = self._sq_norms(Dw, _interpolates(real, fake))
            total = self.k * sq.pow(self.p / 2).mean()
        else:
            sq_r, sq_f = self._sq_norms(Dw, real), self._sq_norms(Dw, fake)
            total = self.k / 2 * (sq_r.pow(self.p / 2).mean() + sq_f.pow(self.p / 2).mean())
            sq = torch.cat([sq_r, sq_f])
        return LossTerms(total, {"penalty/div": total.detach(), "grad_norm/div": sq.detach().sqrt().mean()})


# Losses --------------------------------------------------------------------------------------------------------


class Loss:
    """Base class: ``d_loss`` and ``g_loss`` on scores of shape (N,); ``penalties`` are added to L_D by the loop."""

    name: str = ""  # the conf/loss file that builds it
    plain: str = ""  # for a loss that carries its own penalty: the same loss without it
    penalties: tuple[Penalty, ...] = ()
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

    name = "sgan"

    def __init__(self, saturating: bool = False):
        self.saturating = saturating

    def d_loss(self, d_real, d_fake, real, fake):
        return _terms({"d/real": F.softplus(-d_real).mean(), "d/fake": F.softplus(d_fake).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        g = -F.softplus(d_fake).mean() if self.saturating else F.softplus(-d_fake).mean()
        return _terms({"g/fake": g})


class WGAN(Loss):
    """Wasserstein GAN, Arjovsky et al. 2017, arXiv 1701.07875: L_D = E D(G(z)) − E D(x), L_G = −E D(G(z)).

    Needs a Lipschitz constraint (clip, sn, gp, gn, ...) to be meaningful.
    """

    name = "wgan"

    def d_loss(self, d_real, d_fake, real, fake):
        return _terms({"d/real": -d_real.mean(), "d/fake": d_fake.mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return _terms({"g/fake": -d_fake.mean()})


class WGANGP(WGAN):
    """WGAN-GP, Gulrajani et al. 2017, arXiv 1704.00028: WGAN + weight·E(‖∇D(x̂)‖₂ − 1)² on interpolates.

    Same as ``loss=wgan constraint=gp`` (identical RNG use). Defaults: weight=10, one_sided=False.
    A constraint that normalises the critic's output (``constraint=gn`` or ``gran``) replaces the penalty: the run
    is ``loss=wgan`` with that constraint (see :class:`ganbench.constraints.GradNorm` for why).
    """

    name, plain = "wgan_gp", "wgan"

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        self.penalties = (GradientPenalty(weight, one_sided),)


class WGANDiv(WGAN):
    """WGAN-div, Wu et al. ECCV 2018, arXiv 1712.01026: WGAN + k·E‖∇D(x̂)‖^p (see :class:`DivergencePenalty`).

    Defaults: k=2, p=6, at="interpolates". ``constraint=gn``/``gran`` replace the penalty (as for WGAN-GP).
    """

    name, plain = "wgan_div", "wgan"

    def __init__(self, k: float = 2.0, p: float = 6.0, at: str = "interpolates"):
        self.penalties = (DivergencePenalty(k, p, at),)


class Hinge(Loss):
    """Hinge loss, Lim & Ye 2017, arXiv 1705.02894 (SN-GAN eq. 16-17).

    L_D = E relu(1 − D(x)) + E relu(1 + D(G(z))), L_G = −E D(G(z)).
    With ``constraint=gn`` (|D̂| < 1) both relus are always active, so hinge + gn = wgan + gn + 2, step for step.
    """

    name = "hinge"

    def d_loss(self, d_real, d_fake, real, fake):
        return _terms({"d/real": F.relu(1 - d_real).mean(), "d/fake": F.relu(1 + d_fake).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return _terms({"g/fake": -d_fake.mean()})


class LSGAN(Loss):
    """Least-squares GAN, Mao et al. 2017, arXiv 1611.04076, on raw scores (StudioGAN convention).

    L_D = ½E(D(x) − 1)² + ½E D(G(z))², L_G = ½E(D(G(z)) − 1)².
    """

    name = "lsgan"

    def d_loss(self, d_real, d_fake, real, fake):
        return _terms({"d/real": 0.5 * (d_real - 1).square().mean(), "d/fake": 0.5 * d_fake.square().mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        return _terms({"g/fake": 0.5 * (d_fake - 1).square().mean()})


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
        _check(norm in self._NORMS, f"ganqp norm must be one of {self._NORMS}, got {norm!r}.")
        _check(pairs in self._PAIRS, f"ganqp pairs must be one of {self._PAIRS}, got {pairs!r}.")
        _check(lam > 0, f"ganqp lam must be > 0, got {lam}.")
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
        return _terms({"d/linear": -delta.mean(), "d/quadratic": (delta.square() / (2 * self.lam * dist)).mean()})

    def g_loss(self, d_fake, d_real=None, real=None, fake=None):
        if d_real is None:
            raise ValueError("GANQP.g_loss needs d_real (g_uses_real=True).")
        return _terms({"g/real": d_real.mean(), "g/fake": -d_fake.mean()})
