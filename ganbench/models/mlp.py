"""ReLU MLPs, plus the pieces every ganbench model shares (:class:`GeneratorBase`, :func:`image_shape`).

The MLP pair is the usual 2D-toy architecture (ring8 / grid25 of VEEGAN, arXiv 1705.07761, and PacGAN, arXiv
1712.04086; WGAN-GP's toy code uses the same ReLU MLP). It also runs on flattened images.
"""

import math

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


def _mlp(n_in: int, hidden: int, depth: int, n_out: int) -> nn.Sequential:
    """``depth`` hidden layers ``Linear(·, hidden) → ReLU``, then ``Linear(hidden, n_out)``."""
    layers, width = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, n_out))


class MLPGenerator(GeneratorBase):
    """z → [Linear(hidden) → ReLU] × depth → Linear(prod(out_shape)).

    2D toys (``out_shape=(2,)``): raw linear output. Images (``(C, H, W)``): tanh, then reshape. PyTorch's default
    ``nn.Linear`` initialisation (Kaiming-uniform, a=√5), as in the WGAN-GP toy code.
    """

    def __init__(self, out_shape, z_dim: int = 2, hidden: int = 512, depth: int = 3):
        super().__init__(out_shape, z_dim)
        self.net = _mlp(self.z_dim, hidden, depth, math.prod(self.out_shape))
        self.out = nn.Tanh() if len(self.out_shape) == 3 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(z)).view(-1, *self.out_shape)


class MLPDiscriminator(nn.Module):
    """flatten(x) → [Linear(hidden) → ReLU] × depth → Linear(1); returns (N,) raw scores. No normalisation."""

    def __init__(self, in_shape, hidden: int = 512, depth: int = 3):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.net = _mlp(math.prod(self.in_shape), hidden, depth, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)
