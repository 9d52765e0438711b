"""ReLU MLPs for the 2D toys (and flattened images).

The MLP pair is the usual 2D-toy architecture (ring8 / grid25 of VEEGAN, arXiv 1705.07761, and PacGAN, arXiv
1712.04086; WGAN-GP's toy code uses the same ReLU MLP). It also runs on flattened images.
"""

import math

import torch
from torch import nn

from ganbench.models.base import GeneratorBase


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
    ``nn.Linear`` initialisation (Kaiming-uniform, a=√5, i.e. bound 1/√fan_in); WGAN-GP's ``gan_toy.py`` uses
    He-uniform on its ReLU layers and width 512 — kept as is, the tuned toy presets depend on it.
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
