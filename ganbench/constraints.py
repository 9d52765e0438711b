"""Lipschitz constraints on D: one protocol, four hooks, no name checks in the loop.

``prepare(D)`` acts once at build time (SN), ``wrap(D)`` returns the critic used in both D and G steps (GN, GraN),
``penalties`` are added to L_D (GP, R1), ``after_d_step(D)`` runs after each D optimizer step (clip).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ganbench.errors import GanbenchError
from ganbench.losses import R1, GradientPenalty, Penalty, input_grad


class Constraint:
    """Base class: every hook is a no-op.

    ``normalizes_critic`` marks a constraint whose wrapper divides f's output by f's own input gradient (GN, GraN).
    Such a constraint takes the role of a loss's own Lipschitz penalty (``loss=wgan_gp``, ``loss=wgan_div``): that
    penalty is not applied (:meth:`run_penalties`; why: :class:`GradNorm`), and :func:`stacking_note` says so.
    """

    name: str = ""
    penalties: tuple[Penalty, ...] = ()
    has_after_d_step: bool = False
    normalizes_critic: bool = False

    def run_penalties(self, loss_penalties: tuple[Penalty, ...]) -> tuple[Penalty, ...]:
        """The penalties added to L_D: the loss's own, then this constraint's; only its own if it normalises D."""
        return tuple(self.penalties) if self.normalizes_critic else tuple(loss_penalties) + tuple(self.penalties)

    def prepare(self, D: nn.Module) -> nn.Module:
        return D

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return D

    def after_d_step(self, D: nn.Module) -> None:
        pass


class NoConstraint(Constraint):
    """No constraint (``constraint=none``): D is used as is."""

    name = "none"


class WeightClip(Constraint):
    """Weight clipping, Arjovsky et al. 2017, arXiv 1701.07875: clamp every D parameter to [−c, c] after each D step.

    Default c=0.01 (the paper pairs it with RMSProp, lr 5e-5).
    """

    name = "clip"
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

    name = "sn"
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

    name = "gp"

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        self.penalties = (GradientPenalty(weight, one_sided),)


class R1Constraint(Constraint):
    """R1, Mescheder et al. 2018, arXiv 1801.04406: + (γ/2) E‖∇D(x)‖² on real samples. Default γ=10."""

    name = "r1"

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

    For a locally linear f, ‖∇D̂‖ = ‖∇f‖²/(‖∇f‖ + |f|)² ≤ 1, equal to 1 only where f = 0, and D̂ is invariant to the
    scale of f (D̂(c·f) = D̂(f), c > 0). Two consequences:

    * GN replaces a loss's own Lipschitz penalty: ``loss=wgan_gp constraint=gn`` runs as ``loss=wgan constraint=gn``
      (bit for bit; the start of the run says so). Stacked, the penalty has no good place to act. On D̂,
      λ(‖∇D̂(x̂)‖ − 1)² can only be met by f → 0 on the interpolates: it took ~90 % of L_D, E D̂(fake) rose above
      E D̂(real) and G collapsed to one blob. On the raw f, it pins ‖∇f‖ = 1 while the loss drives |f| up (real and
      fake images lie ~20 apart in pixel space), so D̂ saturates at ±0.95, ‖∇D̂‖ ≈ 0.002 and G collapses again
      (both measured on mnist_mini; docs/RESULTS.md). WGAN-div's k‖∇‖^p, which pushes gradients to 0, saturates
      D̂ the same way.
    * |D̂| < 1 keeps the hinge always active: relu(1 ∓ D̂) = 1 ∓ D̂, so ``hinge + gn`` is ``wgan + gn`` plus a
      constant, step for step. The reference code (basiclab/GNGAN-PyTorch ``losses.py``: plain ``HingeLoss`` on
      the normalised output) does the same; this is a property of GN, not a bug.
    """

    name = "gn"
    normalizes_critic = True

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return partial(grad_normalize, D)


class GraN(Constraint):
    """Piecewise gradient normalization (GraN-GAN), Bhaskara et al. WACV 2022, arXiv 2111.03162 (no public code).

        D̂(x) = K · f(x)·‖∇ₓf(x)‖ / (‖∇ₓf(x)‖² + ε)

    Wraps D's forward in both D and G steps. Defaults K=1, ε=1e-4: the formula is the paper's (as Su, kexue.fm
    8757, restates it); the default values could not be checked against the paper's text (reference audit,
    docs/RESULTS.md). ‖∇D̂‖ = K·‖∇f‖²/(‖∇f‖² + ε) ≤ K inside each linear piece of a ReLU/LeakyReLU critic, but D̂
    jumps where pieces meet (D̂ ≈ K·f/‖∇f‖ is K times the distance to the piece's own zero level), so:

    * with an unbounded linear loss (``wgan``, and ``wgan_gp``/``wgan_div``, whose penalties GraN replaces) the
      critic objective E D̂(real) − E D̂(fake) has no upper bound: the critic grows the jumps between the pieces
      holding real and fake points (tests/test_reference.py: a gap of ~500 between points 0.02 apart). On grid25
      every WGAN-type loss + gran ends with 0 modes and W1 in the thousands.
    * K cannot cure it: D̂ is linear in K and the WGAN losses are linear in D̂, so K only scales the gradients and
      Adam divides the scale out (same trajectory for K=1 and K=10, tested). With a saturating loss (``hinge``,
      ``sgan``) K sets the logit scale and does matter.
    * ε is absolute while the rest ignores f's scale: where ‖∇f‖² ≲ ε, D̂ ≈ K·f·‖∇f‖/ε is not normalised (the
      SN-GAN CNN's D at init has ‖∇f‖² ≈ 7e-6, so GraN starts there until D grows its own scale).
    """

    name = "gran"
    normalizes_critic = True  # D̂ ≈ K·f/‖∇f‖, ‖∇D̂‖ ≈ K: GraN, like GN, replaces a loss's own Lipschitz penalty

    def __init__(self, K: float = 1.0, eps: float = 1e-4):
        if not (K > 0 and eps > 0):
            raise GanbenchError(f"gran needs K > 0 and eps > 0, got K={K}, eps={eps}.")
        self.K, self.eps = K, eps

    def wrap(self, D: nn.Module) -> Callable[[Tensor], Tensor]:
        return partial(gran_normalize, D, K=self.K, eps=self.eps)


def stacking_note(loss, constraint: Constraint) -> str | None:
    """One line for the start of a run when a loss carrying its own penalty meets another gradient constraint.

    ``loss`` is a :class:`ganbench.losses.Loss`; returns None when nothing stacks (the loss has no penalty, or the
    constraint neither adds a penalty nor normalises the critic: none, clip, sn). The line says what runs and the
    command of the plain variant.
    """
    if not loss.penalties or not (constraint.penalties or constraint.normalizes_critic):
        return None
    name = loss.name or type(loss).__name__.lower()
    cname = constraint.name or type(constraint).__name__.lower()
    own = "+".join(p.name for p in loss.penalties)
    plain = loss.plain or "its base loss"
    if constraint.normalizes_critic:
        return (f"loss={name} + constraint={cname}: {cname} normalises the critic and replaces {name}'s own {own} "
                f"penalty, which is not applied: this run is loss={plain} constraint={cname}; for {name} alone: "
                f"loss={name} constraint=none.")
    extra = "+".join(p.name for p in constraint.penalties)
    return (f"loss={name} + constraint={cname}: {name}'s own {own} penalty and the constraint's {extra} penalty are "
            f"both added to L_D; plain variants: loss={plain} constraint={cname}, or loss={name} constraint=none.")


# Pairings the reference audit found to fail by construction (docs/RESULTS.md, "Reference audit").
UNBOUNDED_UNDER_GRAN = ("wgan", "wgan_gp", "wgan_div")


def pairing_warning(loss, constraint: Constraint) -> str | None:
    """One warning line for the start of a run whose loss × constraint pairing cannot train, or None.

    GraN bounds the critic's slope only inside each linear piece; a WGAN-type loss (linear in D̂, no upper bound)
    then grows the jumps between pieces without limit, and K only rescales gradients, which Adam divides out.
    """
    if constraint.name == "gran" and loss.name in UNBOUNDED_UNDER_GRAN:
        return (f"loss={loss.name} + constraint=gran cannot train: GraN bounds the critic only piecewise and a "
                f"WGAN-type loss is unbounded, so the critic diverges (K does not help under Adam); use loss=hinge "
                f"or sgan with gran, or constraint=gn.")
    return None
