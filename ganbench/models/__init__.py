"""Generators and discriminators (nn.Modules only; no normalisation in D — constraints add it).

Built by ``hydra.utils.instantiate(cfg.model.generator, out_shape=dataset.shape)`` and
``instantiate(cfg.model.discriminator, in_shape=dataset.shape)``. Every generator has ``z_dim``, ``out_shape`` and
``sample_z(n, device=None, generator=None)``; ``G(z)`` is ``(N, *out_shape)`` and ``D(x)`` is ``(N,)`` raw scores.
"""

from ganbench.models.base import GeneratorBase
from ganbench.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganbench.models.mlp import MLPDiscriminator, MLPGenerator
from ganbench.models.sngan import (
    SNGANCNNDiscriminator,
    SNGANCNNGenerator,
    SNGANResNetDiscriminator,
    SNGANResNetGenerator,
)

__all__ = [
    "GeneratorBase",
    "MLPGenerator",
    "MLPDiscriminator",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "SNGANCNNGenerator",
    "SNGANCNNDiscriminator",
    "SNGANResNetGenerator",
    "SNGANResNetDiscriminator",
]
