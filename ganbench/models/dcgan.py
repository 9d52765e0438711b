"""DCGAN, Radford, Metz & Chintala 2015 (arXiv 1511.06434), the usual 32×32 variant.

Initialisation: conv / linear weights ~ N(0, 0.02) as in the paper (§4), biases 0, and BatchNorm γ ~ N(1, 0.02),
which is the PyTorch DCGAN example's (pytorch/examples ``dcgan/main.py``), not the paper's (§4 names only the weights).
Deliberate differences from the paper: 4×4 kernels at 32×32 (the paper: 64×64) and a linear projection of z. D has
no BatchNorm by default (gradient penalties and gradient normalisation take per-sample input gradients, which
BatchNorm couples across the batch); ``batchnorm=True`` gives the paper's D, BatchNorm after every conv but the
first, as in the WGAN code (martinarjovsky/WassersteinGAN ``models/dcgan.py``).
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
    """x → Conv 4×4 s2 to ch, 2ch, 4ch (LeakyReLU 0.2 each) → Linear(4·4·4ch → 1); (N,) scores.

    ``batchnorm=True``: BatchNorm after the second and third conv (their bias dropped, BatchNorm's shift replaces
    it), as in the DCGAN and WGAN papers' critics. Each call normalises over the batch it is given, so D(real) and
    D(fake) are normalised separately, as in the WGAN code.
    """

    def __init__(self, in_shape, ch: int = 64, batchnorm: bool = False):
        super().__init__()
        self.in_shape = image_shape(in_shape, "dcgan")

        def down(c_in: int, c_out: int, norm: bool) -> list[nn.Module]:
            conv = nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)
            return [conv, nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)] if norm else [conv, nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            *down(self.in_shape[0], ch, False),  # 16×16
            *down(ch, ch * 2, batchnorm),  # 8×8
            *down(ch * 2, ch * 4, batchnorm),  # 4×4
            nn.Flatten(), nn.Linear(4 * 4 * ch * 4, 1),
        )  # fmt: skip
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
