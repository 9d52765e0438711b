"""Lipschitz constraints on D: one protocol, four hooks, and the home of every penalty.

``prepare(D)`` acts once at build time (SN), ``wrap(D)`` returns the critic used in both D and G steps (GN, GraN),
``penalties`` are added to L_D (GP, R1), ``after_d_step(D)`` runs after each D optimizer step (clip). A penalty is
``penalty(D, Dw, real, fake) -> LossTerms``: ``D`` is the module, so a penalty can read its weights (an orthogonality
penalty on ``D.parameters()``), and ``Dw`` the critic the loss sees, for penalties on its input gradients (GP, R1).

Losses published with a penalty (WGAN-GP, WGAN-div) are a loss class that declares it: ``WGANGP`` is the WGAN loss
with ``penalty = GradientPenalty(weight, one_sided)``, built from ``conf/loss/wgan_gp.yaml``'s keys. The loss never
computes it; the constraint decides, once per run, which penalties run (:meth:`Constraint.run_penalties`): the
loss's, then its own. So ``loss=wgan_gp`` runs exactly what ``loss=wgan constraint=gp`` runs, in the same order and
with the same random draws (the same run bit for bit), the command line and the ``loss.weight`` users pass stay as
they are, and the config, hence the resume identity, of earlier runs is unchanged. Composing a ``gp`` constraint from
the loss YAML instead would move ``loss.weight`` and need a second constraint slot.

A constraint that replaces D's output by a self-normalised critic (:class:`NormalizedCritic`: GN, GraN) replaces the
loss's penalty instead of adding to it (why: :class:`GradNorm`). The rule and the line that announces it
(:meth:`Constraint.note`), and the warning for a pairing that cannot train (:meth:`Constraint.warning`), are methods of
the classes: the loop and the bench ask the objects and never check a name.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ganbench import methods
from ganbench.errors import GanbenchError
from ganbench.terms import LossTerms, check

Critic = Callable[[Tensor], Tensor]


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
    """A regularizer of D added to L_D: ``penalty(D, Dw, real, fake) -> LossTerms`` (fake is already detached).

    ``D`` is the discriminator module (its weights), ``Dw`` the critic the loss sees (D, or GN's/GraN's wrapper).
    ``name`` names its logged parts (``penalty/NAME``).
    """

    name: str = ""

    def __call__(self, D: nn.Module, Dw: Critic, real: Tensor, fake: Tensor) -> LossTerms:
        raise NotImplementedError


class GradientPenalty(Penalty):
    """WGAN-GP penalty, Gulrajani et al. 2017, arXiv 1704.00028.

    weight · E(‖∇D(x̂)‖₂ − 1)² on x̂ = εx + (1−ε)G(z), ε~U[0,1] per sample; ``one_sided`` uses
    max(0, ‖∇D(x̂)‖₂ − 1)². Defaults: weight=10, one_sided=False.
    """

    name = "gp"

    def __init__(self, weight: float = 10.0, one_sided: bool = False):
        check(weight >= 0, f"gradient penalty weight must be >= 0, got {weight}.")
        self.weight, self.one_sided = weight, one_sided

    def __call__(self, D, Dw, real, fake):
        _, grad = input_grad(Dw, _interpolates(real, fake))
        norm = grad.norm(dim=1)
        gap = (norm - 1).clamp_min(0) if self.one_sided else norm - 1
        total = self.weight * gap.square().mean()
        return LossTerms(total, {"penalty/gp": total.detach(), "grad_norm/gp": norm.detach().mean()})


class R1(Penalty):
    """R1 penalty, Mescheder et al. 2018, arXiv 1801.04406: (γ/2) E‖∇D(x)‖² on real samples. Default γ=10."""

    name = "r1"

    def __init__(self, gamma: float = 10.0):
        check(gamma >= 0, f"r1 gamma must be >= 0, got {gamma}.")
        self.gamma = gamma

    def __call__(self, D, Dw, real, fake):
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
        check(at in self._AT, f"wgan_div 'at' must be one of {self._AT}, got {at!r}.")
        check(k >= 0 and p > 0, f"wgan_div needs k >= 0 and p > 0, got k={k}, p={p}.")
        self.k, self.p, self.at = k, p, at

    def _sq_norms(self, Dw: Critic, x: Tensor) -> Tensor:
        return input_grad(Dw, x)[1].square().sum(dim=1)

    def __call__(self, D, Dw, real, fake):
        if self.at == "interpolates":
            sq = self._sq_norms(Dw, _interpolates(real, fake))
            total = self.k * sq.pow(self.p / 2).mean()
        else:
            sq_r, sq_f = self._sq_norms(Dw, real), self._sq_norms(Dw, fake)
            total = self.k / 2 * (sq_r.pow(self.p / 2).mean() + sq_f.pow(self.p / 2).mean())
            sq = torch.cat([sq_r, sq_f])
        return LossTerms(total, {"penalty/div": total.detach(), "grad_norm/div": sq.detach().sqrt().mean()})


# Constraints ---------------------------------------------------------------------------------------------------


class Constraint:
    """Base class: every hook is a no-op; a loss's own penalty runs, then ``penalties``.

    ``loss`` arguments are :class:`ganbench.losses.Loss` objects: ``loss.penalty`` is the penalty the loss was
    published with, or None.
    """

    penalties: tuple[Penalty, ...] = ()
    has_after_d_step: bool = False

    def run_penalties(self, loss) -> tuple[Penalty, ...]:
        """The penalties added to L_D in a run with ``loss``: the loss's own, then this constraint's."""
        return ((loss.penalty,) if loss.penalty else ()) + tuple(self.penalties)

    def note(self, loss) -> str | None:
        """One line for the start of a run when the loss's own penalty meets this constraint's; else None."""
        if not (loss.penalty and self.penalties):
            return None
        name, cname, plain = _names(loss, self)
        own, extra = loss.penalty.name, "+".join(p.name for p in self.penalties)
        return (f"loss={name} + constraint={cname}: {name}'s own {own} penalty and the constraint's {extra} penalty "
                f"are both added to L_D; plain variants: loss={plain} constraint={cname}, or loss={name} "
                f"constraint=none.")

    def warning(self, loss) -> str | None:
        """One warning line for the start of a run whose pairing with ``loss`` cannot train; else None."""
        return None

    def prepare(self, D: nn.Module) -> nn.Module:
        return D

    def wrap(self, D: nn.Module) -> Critic:
        return D

    def after_d_step(self, D: nn.Module) -> None:
        pass


def _names(loss, constraint: Constraint) -> tuple[str, str, str]:
    """The loss's and the constraint's option names, and the loss's without its penalty (its nearest base's)."""
    plain = methods.base_name(type(loss), "loss", keep=lambda c: getattr(c, "penalty", None) is None)
    return methods.name_of(loss, "loss"), methods.name_of(constraint, "constraint"), plain or "its base loss"


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


class NormalizedCritic(Constraint):
    """A constraint whose critic divides f's output by f's own input gradient (GN, GraN).

    It takes the role of the loss's own Lipschitz penalty (``loss=wgan_gp``, ``loss=wgan_div``): that penalty is not
    applied, only this constraint's own (why: :class:`GradNorm`), and the start of the run says so.
    """

    def run_penalties(self, loss) -> tuple[Penalty, ...]:
        return tuple(self.penalties)

    def note(self, loss) -> str | None:
        if not loss.penalty:
            return None
        name, cname, plain = _names(loss, self)
        return (f"loss={name} + constraint={cname}: {cname} normalises the critic and replaces {name}'s own "
                f"{loss.penalty.name} penalty, which is not applied: this run is loss={plain} constraint={cname}; "
                f"for {name} alone: loss={name} constraint=none.")


class GradNorm(NormalizedCritic):
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

    def wrap(self, D: nn.Module) -> Critic:
        return partial(grad_normalize, D)


class GraN(NormalizedCritic):
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

    def __init__(self, K: float = 1.0, eps: float = 1e-4):
        if not (K > 0 and eps > 0):
            raise GanbenchError(f"gran needs K > 0 and eps > 0, got K={K}, eps={eps}.")
        self.K, self.eps = K, eps

    def wrap(self, D: nn.Module) -> Critic:
        return partial(gran_normalize, D, K=self.K, eps=self.eps)

    def warning(self, loss) -> str | None:
        """A loss linear in the critic's scores (WGAN-type) cannot train under GraN's piecewise bound."""
        if not loss.linear_in_critic:
            return None
        name, cname = methods.name_of(loss, "loss"), methods.name_of(self, "constraint")
        return (f"loss={name} + constraint={cname} cannot train: GraN bounds the critic only piecewise and a "
                f"WGAN-type loss is unbounded, so the critic diverges (K does not help under Adam); use loss=hinge "
                f"or sgan with gran, or constraint=gn.")
