"""ReLU MLPs for the 2D toys (and flattened images).

The MLP pair is the usual 2D-toy architecture (ring8 / grid25 of VEEGAN, arXiv 1705.07761, and PacGAN, arXiv
1712.04086; WGAN-GP's toy code uses the same ReLU MLP). It also runs on flattened images.
"""

import math

import torch
from torch import nn

from ganbench.models.base import GeneratorBase

INITS = ("default", "he")


def _mlp(n_in: int, hidden: int, depth: int, n_out: int, init: str = "default") -> nn.Sequential:
    """``depth`` hidden layers ``Linear(·, hidden) → ReLU``, then ``Linear(hidden, n_out)``.

    ``init="default"``: PyTorch's ``nn.Linear`` initialisation (Kaiming-uniform with a=√5: weights and biases
    U(±1/√fan_in)). Each ReLU layer then shrinks the signal's second moment about 6-fold, so a 4-layer toy G starts
    with its samples within ~0.01 of one bias-set point. ``init="he"``: WGAN-GP's toy code (gan_toy.py, tflib
    ``Linear``): He-uniform weights U(±√(6/fan_in)) on the ReLU layers, LeCun-uniform U(±√(3/fan_in)) on the output
    layer (tflib's default for a non-square layer), zero biases; the signal keeps its scale through the layers.
    """
    if init not in INITS:
        raise ValueError(f"MLP init must be one of {INITS}, got {init!r}.")
    layers, width = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    if init == "he":
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        for m in linears:
            relu_layer = m is not linears[-1]
            bound = math.sqrt((6.0 if relu_layer else 3.0) / m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class MLPGenerator(GeneratorBase):
    """z → [Linear(hidden) → ReLU] × depth → Linear(prod(out_shape)).

    2D toys (``out_shape=(2,)``): raw linear output. Images (``(C, H, W)``): tanh, then reshape. ``init``: PyTorch's
    default ``nn.Linear`` initialisation (the default; the tuned toy presets were found with it) or ``"he"``, as
    WGAN-GP's ``gan_toy.py`` (see :func:`_mlp`).
    """

    def __init__(self, out_shape, z_dim: int = 2, hidden: int = 512, depth: int = 3, init: str = "default"):
        super().__init__(out_shape, z_dim)
        self.net = _mlp(self.z_dim, hidden, depth, math.prod(self.out_shape), init)
        self.out = nn.Tanh() if len(self.out_shape) == 3 else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(z)).view(-1, *self.out_shape)


class MLPDiscriminator(nn.Module):
    """flatten(x) → [Linear(hidden) → ReLU] × depth → Linear(1); returns (N,) raw scores. No normalisation.
    ``init`` as :class:`MLPGenerator`'s."""

    def __init__(self, in_shape, hidden: int = 512, depth: int = 3, init: str = "default"):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.net = _mlp(math.prod(self.in_shape), hidden, depth, 1, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)
