"""DCGAN, Radford, Metz & Chintala 2015 (arXiv 1511.06434), the usual 32×32 variant.

Initialisation: conv / linear weights ~ N(0, 0.02) as in the paper (§4), biases 0, and BatchNorm γ ~ N(1, 0.02),
which is the PyTorch DCGAN example's (pytorch/examples ``dcgan/main.py``), not the paper's (§4 names only the weights).
Deliberate differences from the paper: 4×4 kernels at 32×32 (the paper: 64×64), a linear projection of z, and no
BatchNorm in D (ganbench's D carries no normalisation; constraints add it).
"""

import torch
from torch import nn

from ganbench.models.base import GeneratorBase, image_shape


def dcgan_init(module: nn.Module) -> None:
    """Weights ~ N(0, 0.02) (Radford et al. 2015, §4), BatchNorm γ ~ N(1, 0.02) (pytorch/examples DCGAN), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class DCGANGenerator(GeneratorBase):
    """z → Linear 4×4×8ch → BN, ReLU → ConvT 4×4 s2 to 4ch, 2ch (BN, ReLU) → ConvT 4×4 s2 to C → tanh; 32×32."""

    def __init__(self, out_shape, z_dim: int = 128, ch: int = 64):
        super().__init__(image_shape(out_shape, "dcgan"), z_dim)
        c = self.out_shape[0]
        self.fc = nn.Linear(self.z_dim, 4 * 4 * ch * 8)
        self.net = nn.Sequential(
            nn.BatchNorm2d(ch * 8), nn.ReLU(),
            nn.ConvTranspose2d(ch * 8, ch * 4, 4, 2, 1), nn.BatchNorm2d(ch * 4), nn.ReLU(),  # 8×8
            nn.ConvTranspose2d(ch * 4, ch * 2, 4, 2, 1), nn.BatchNorm2d(ch * 2), nn.ReLU(),  # 16×16
            nn.ConvTranspose2d(ch * 2, c, 4, 2, 1), nn.Tanh(),  # 32×32
        )  # fmt: skip
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], -1, 4, 4))


class DCGANDiscriminator(nn.Module):
    """x → Conv 4×4 s2 to ch, 2ch, 4ch (LeakyReLU 0.2 each, no BatchNorm) → Linear(4·4·4ch → 1); (N,) scores."""

    def __init__(self, in_shape, ch: int = 64):
        super().__init__()
        self.in_shape = image_shape(in_shape, "dcgan")
        self.net = nn.Sequential(
            nn.Conv2d(self.in_shape[0], ch, 4, 2, 1), nn.LeakyReLU(0.2),  # 16×16
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2),  # 8×8
            nn.Conv2d(ch * 2, ch * 4, 4, 2, 1), nn.LeakyReLU(0.2),  # 4×4
            nn.Flatten(), nn.Linear(4 * 4 * ch * 4, 1),
        )  # fmt: skip
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
