"""Lipschitz constraints on D: one protocol, four hooks, no name checks in the loop.

``prepare(D)`` acts once at build time (SN), ``wrap(D)`` returns the critic used in both D and G steps (GN, GraN),
``penalties`` are added to L_D (GP, R1), ``after_d_step(D)`` runs after each D optimizer step (clip).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ganbench.errors import GanbenchError
from ganbench.losses import R1, GradientPenalty, Penalty, input_grad


class Constraint:
    """Base class: every hook is a no-op."""

    penalties: tuple[Penalty, ...] = ()
    has_after_d_step: bool = False

    def prepare(self, D: nn.Module) -> nn.Module:
        return D

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return D

    def after_d_step(self, D: nn.Module) -> None:
        pass


class NoConstraint(Constraint):
    """No constraint (``constraint=none``): D is used as is."""


class WeightClip(Constraint):
    """Weight clipping, Arjovsky et al. 2017, arXiv 1701.07875: clamp every D parameter to [−c, c] after each D step.

    Default c=0.01 (the paper pairs it with RMSProp, lr 5e-5).
    """

    has_after_d_step = True

    def __init__(self, c: float = 0.01):
        if not c > 0:
            raise GanbenchError(f"clip c must be > 0, got {c}.")
        self.c = c

    @torch.no_grad()
    def after_d_step(self, D: nn.Module) -> None:
        for p in D.parameters():
            p.clamp_(-self.c, self.c)


class SpectralNorm(Constraint):
    """Spectral normalization, Miyato et al. 2018, arXiv 1802.05957: W ← W/σ(W) on every Conv/ConvTranspose/Linear.

    σ by power iteration with u persisted, ``n_power_iterations`` per training forward (default 1); conv weights
    are reshaped to (out, in·kh·kw) (torch's ``spectral_norm`` does this, dim=1 for transposed convs).
    """

    _LAYERS = (nn.Linear, nn.modules.conv._ConvNd)

    def __init__(self, n_power_iterations: int = 1):
        if n_power_iterations < 1:
            raise GanbenchError(f"sn n_power_iterations must be >= 1, got {n_power_iterations}.")
        self.n_power_iterations = n_power_iterations

    def prepare(self, D: nn.Module) -> nn.Module:
        for m in list(D.modules()):
            if isinstance(m, self._LAYERS) and not parametrize.is_parametrized(m, "weight"):
                spectral_norm(m, n_power_iterations=self.n_power_iterations)
        return D


class GradientPenaltyConstraint(Constraint):
    """WGAN-GP penalty, Gulrajani et al. 2017, arXiv 1704.00028: + weight·E(‖∇D(x̂)‖₂ − 1)² on interpolates.

    ``one_sided`` uses max(0, ‖∇D(x̂)‖₂ − 1)². Defaults: weight=10, one_sided=False.
    """

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        self.penalties = (GradientPenalty(weight, one_sided),)


class R1Constraint(Constraint):
    """R1, Mescheder et al. 2018, arXiv 1801.04406: + (γ/2) E‖∇D(x)‖² on real samples. Default γ=10."""

    def __init__(self, gamma: float = 10.0):
        self.penalties = (R1(gamma),)


def _with_input_grad(D: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """f = D(x) and ‖∇ₓf‖ per sample, shaped to broadcast against f; works under ``torch.no_grad`` too."""
    with torch.enable_grad():
        f, grad = input_grad(D, x)
    return f, grad.norm(dim=1).view(-1, *[1] * (f.dim() - 1))


def grad_normalize(D: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """D̂(x) = f(x) / (‖∇ₓf(x)‖ + |f(x)|), the gradient-normalized critic (see :class:`GradNorm`)."""
    f, norm = _with_input_grad(D, x)
    out = f / (norm + f.abs())
    return out if torch.is_grad_enabled() else out.detach()


def gran_normalize(D: Callable[[Tensor], Tensor], x: Tensor, K: float, eps: float) -> Tensor:
    """D̂(x) = K · f(x)·‖∇ₓf(x)‖ / (‖∇ₓf(x)‖² + ε) (see :class:`GraN`)."""
    f, norm = _with_input_grad(D, x)
    out = K * f * norm / (norm.square() + eps)
    return out if torch.is_grad_enabled() else out.detach()


class GradNorm(Constraint):
    """Gradient normalization (GN-GAN), Wu et al. ICCV 2021, arXiv 2109.02235; ref. basiclab/GNGAN-PyTorch.

                          f(x)
        D̂(x) = ───────────────────────      (|D̂| ≤ 1; per-sample flattened gradient, create_graph=True)
                ‖∇ₓf(x)‖ + |f(x)|

    Wraps D's forward in both D and G steps (double backprop in both). No parameters.
    """

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return partial(grad_normalize, D)


class GraN(Constraint):
    """Piecewise gradient normalization (GraN-GAN), Bhaskara et al. WACV 2022, arXiv 2111.03162 (no public code).

        D̂(x) = K · f(x)·‖∇ₓf(x)‖ / (‖∇ₓf(x)‖² + ε)

    Wraps D's forward in both D and G steps. Defaults K=1, ε=1e-4 (unverified; the paper tunes K).
    """

    def __init__(self, K: float = 1.0, eps: float = 1e-4):
        if not (K > 0 and eps > 0):
            raise GanbenchError(f"gran needs K > 0 and eps > 0, got K={K}, eps={eps}.")
        self.K, self.eps = K, eps

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return partial(gran_normalize, D, K=self.K, eps=self.eps)
