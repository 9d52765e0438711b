"""What every ganbench model shares: :class:`GeneratorBase` (``z_dim``, ``out_shape``, ``sample_z``) and
:func:`image_shape`, the one check of an image model's input shape."""

import torch
from torch import nn

from ganbench.errors import GanbenchError


def image_shape(shape, model: str) -> tuple[int, int, int]:
    """Return ``shape`` as ``(C, 32, 32)``, or raise :class:`GanbenchError` naming the model and the shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise GanbenchError(
            f"model={model} needs an image dataset (C×32×32); dataset shape is {shape} — use model=mlp for 2D toys."
        )
    if shape[1:] != (32, 32):
        raise GanbenchError(f"model={model} needs 32×32 images; dataset shape is {shape} — pad or resize to 32×32.")
    return shape


class GeneratorBase(nn.Module):
    """A generator: ``z_dim``, ``out_shape``, ``sample_z(n)`` and ``forward(z) -> (N, *out_shape)``."""

    def __init__(self, out_shape, z_dim: int):
        super().__init__()
        self.out_shape = tuple(int(s) for s in out_shape)
        self.z_dim = int(z_dim)

    def sample_z(self, n: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n × z_dim`` standard normal latents on ``device`` (default: the model's device).

        Drawn from the global RNG unless a ``torch.Generator`` is given.
        """
        if device is None:
            device = next(self.parameters()).device
        return torch.randn(n, self.z_dim, device=device, generator=generator)
