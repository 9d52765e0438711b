"""One D step and one G step: the only place that calls backward() and optimizer.step().

Both return detached tensors (never floats): the loop reads them on the host only at log intervals, since every
``.item()`` is a GPU sync point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ganbench.constraints import Constraint, Penalty
from ganbench.losses import Loss


class InstanceNoise:
    """Gaussian instance noise on every input of D, annealed linearly to zero.

    x ↦ x + σ_t·ε, ε ~ N(0, I), on the real and the fake batch of each D step and of the G step (Sønderby et al.
    2016, arXiv 1610.04490; Arjovsky & Bottou 2017, arXiv 1701.04862 §3). Convolving both distributions with
    the same noise makes their supports overlap, so the critic is trained between the data's modes too, where its
    slope is what moves G's samples. σ_t = std·max(0, 1 − t/end), t the G step, end = max(1, round(until·steps)).

    ``σ_t`` lives in a 0-dim tensor on the run's device that :meth:`at` fills in place on the host before each
    iteration: a CUDA graph of the iteration reads the current value, as it reads a scheduled lr.
    """

    def __init__(self, std: float, until: float, steps: int, device: torch.device):
        self.std0, self.end = float(std), max(1, round(until * steps))
        self.std = torch.full((), self.std0, device=device)

    def sigma(self, step: int) -> float:
        """σ at G step ``step`` (0-based: the iteration that makes G step ``step + 1``)."""
        return self.std0 * max(0.0, 1.0 - step / self.end)

    def at(self, step: int) -> None:
        """Set σ for the iteration about to run."""
        self.std.fill_(self.sigma(step))

    def __call__(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x)


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class Parts:
    """A step's named scalars; ``total`` is what was backpropagated."""

    total: Tensor
    parts: dict[str, Tensor]


def d_step(G: nn.Module, D: nn.Module, Dw: Callable[[Tensor], Tensor], loss: Loss,
           penalties: tuple[Penalty, ...], constraint: Constraint, opt_d: torch.optim.Optimizer,
           real: Tensor, z: Tensor, noise: InstanceNoise | None = None) -> Parts:
    """L_D = loss.d_loss(Dw(real), Dw(G(z))) + Σ penalties(D, Dw, real, fake); then the constraint's post-step hook.

    ``penalties`` is ``constraint.run_penalties(loss)``, decided once before the loop (GN and GraN replace a loss's
    own penalty; the other constraints add theirs to it). With ``noise``, real and fake are the noised
    batches everywhere: D's inputs, the loss (GAN-QP's pair distance) and the penalties.
    """
    noise = noise or _identity
    with torch.no_grad():
        fake = noise(G(z))
    real = noise(real)
    d_real, d_fake = Dw(real), Dw(fake)
    terms = loss.d_loss(d_real, d_fake, real, fake)
    total, parts = terms.total, dict(terms.parts)
    for penalty in penalties:
        p = penalty(D, Dw, real, fake)
        total = total + p.total
        parts.update(p.parts)
    opt_d.zero_grad(set_to_none=True)
    total.backward()
    opt_d.step()
    if constraint.has_after_d_step:
        constraint.after_d_step(D)
    parts = {k: v.detach() for k, v in parts.items()}
    parts["score/real"] = d_real.detach().mean()
    parts["score/fake"] = d_fake.detach().mean()
    return Parts(total.detach(), parts)


def g_step(G: nn.Module, D: nn.Module, Dw: Callable[[Tensor], Tensor], loss: Loss,
           opt_g: torch.optim.Optimizer, z: Tensor, real: Tensor | None,
           noise: InstanceNoise | None = None) -> Parts:
    """L_G = loss.g_loss(Dw(G(z))); D's parameters are frozen so no gradient is computed for them. With ``noise``,
    D sees G(z) + σε (the gradient reaches G through the sum) and the real batch noised as well."""
    noise = noise or _identity
    D.requires_grad_(False)
    try:
        fake = noise(G(z))
        real = noise(real) if real is not None else None
        d_fake = Dw(fake)
        d_real = Dw(real).detach() if loss.g_uses_real else None
        terms = loss.g_loss(d_fake, d_real, real, fake)
        opt_g.zero_grad(set_to_none=True)
        terms.total.backward()
        opt_g.step()
    finally:
        D.requires_grad_(True)
    return Parts(terms.total.detach(), {k: v.detach() for k, v in terms.parts.items()})


@torch.no_grad()
def ema_update(G_ema: nn.Module, G: nn.Module, decay: float) -> None:
    """θ_ema ← decay·θ_ema + (1−decay)·θ; buffers (BatchNorm statistics) are copied."""
    ema_params = list(G_ema.parameters())
    torch._foreach_lerp_(ema_params, list(G.parameters()), 1.0 - decay)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def lipschitz_estimate(Dw: Callable[[Tensor], Tensor], D: nn.Module, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """Empirical Lipschitz estimate of the (wrapped) D: max and mean ‖∇ₓD̂(x)‖₂ on real, fake and interpolates.

    D is put in eval mode meanwhile so that spectral norm's power iteration does not advance; the caller runs this
    under ``torch.random.fork_rng`` so the interpolation noise does not shift the training RNG stream.
    """
    was_training = D.training
    D.eval()
    D.requires_grad_(False)
    out = {}
    try:
        n = min(len(real), len(fake))
        real, fake = real[:n].detach(), fake[:n].detach()
        eps = torch.rand((n,) + (1,) * (real.dim() - 1), device=real.device, dtype=real.dtype)
        norms = []
        for name, x in (("real", real), ("fake", fake), ("interp", eps * real + (1 - eps) * fake)):
            x = x.clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(Dw(x).sum(), x)
            norm = grad.flatten(1).norm(dim=1)
            out[f"lipschitz/{name}/max"] = norm.max()
            out[f"lipschitz/{name}/mean"] = norm.mean()
            norms.append(norm)
        out["lipschitz/max"] = torch.cat(norms).max()
    finally:
        D.requires_grad_(True)
        D.train(was_training)
    return out
