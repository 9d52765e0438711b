"""SN-GAN architectures for 32×32 images, Miyato et al. 2018 (arXiv 1802.05957), Appendix B.4.

The discriminators here carry no spectral normalisation: ``constraint=sn`` (or any other constraint) adds it.
Initialisation as the authors' Chainer code (pfnet-research/chainer-gan-lib ``common/net.py`` for the standard CNN,
pfnet-research/sngan_projection for the ResNet) and the PyTorch reimplementations (basiclab/GNGAN-PyTorch,
w86763777/pytorch-gan-collections): standard CNN: conv / linear weights ~ N(0, 0.02), biases 0, BatchNorm at its
default (γ = 1, β = 0); ResNet: Xavier-uniform with gain √2 on the residual-branch convs and gain 1 on shortcuts,
linear layers and G's output conv, biases 0.
"""

import math

import torch
from torch import nn

from ganbench.errors import GanbenchError
from ganbench.models.base import GeneratorBase, image_shape


def _normal_init(module: nn.Module) -> None:
    """Conv / transposed conv / linear weights ~ N(0, 0.02), biases 0; BatchNorm left at γ = 1, β = 0 (Chainer)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# Standard CNN (Table 3).


class SNGANCNNGenerator(GeneratorBase):
    """Table 3 (a): z → Linear 4×4×ch (M_g = 4) → BN, ReLU → deconv 4×4 s2 to ch/2, ch/4, ch/8 (BN, ReLU each)
    → conv 3×3 s1 to C → tanh. The paper's sizes are ``ch=512``, i.e. 512 → 256 → 128 → 64.
    """

    def __init__(self, out_shape, z_dim: int = 128, ch: int = 512):
        super().__init__(image_shape(out_shape, "sngan_cnn"), z_dim)
        self.fc = nn.Linear(self.z_dim, 4 * 4 * ch)
        self.net = nn.Sequential(
            nn.BatchNorm2d(ch), nn.ReLU(),
            nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.BatchNorm2d(ch // 2), nn.ReLU(),  # 8×8
            nn.ConvTranspose2d(ch // 2, ch // 4, 4, 2, 1), nn.BatchNorm2d(ch // 4), nn.ReLU(),  # 16×16
            nn.ConvTranspose2d(ch // 4, ch // 8, 4, 2, 1), nn.BatchNorm2d(ch // 8), nn.ReLU(),  # 32×32
            nn.Conv2d(ch // 8, self.out_shape[0], 3, 1, 1), nn.Tanh(),
        )  # fmt: skip
        _normal_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], -1, 4, 4))


class SNGANCNNDiscriminator(nn.Module):
    """Table 3 (b): conv 3×3 s1, 4×4 s2, 3×3 s1, 4×4 s2, 3×3 s1, 4×4 s2, 3×3 s1, each followed by LeakyReLU(0.1)
    (Table 3's slope), then Linear(4·4·8ch → 1). Two channel layouts (``ch=64`` is the paper's size):

    * ``layout="table3"`` (default): ch, ch, 2ch, 2ch, 4ch, 4ch, 8ch = 64, 64, 128, 128, 256, 256, 512, as Table 3
      lists and as the paper's Figure 3 (singular values per layer: 64, 128, 128, 256, 256, 512 of them) confirms.
    * ``layout="chainer"``: ch, 2ch, 2ch, 4ch, 4ch, 8ch, 8ch = 64, 128, 128, 256, 256, 512, 512, the strided convs
      doubling the width: chainer-gan-lib ``SNDCGANDiscriminator``, basiclab/GNGAN-PyTorch ``dcgan.32`` and
      pytorch-gan-collections ``cnn32`` (their published numbers were made with this one).
    """

    _LAYOUTS = ("table3", "chainer")

    def __init__(self, in_shape, ch: int = 64, layout: str = "table3"):
        super().__init__()
        self.in_shape = image_shape(in_shape, "sngan_cnn")
        if layout not in self._LAYOUTS:
            raise GanbenchError(f"sngan_cnn discriminator layout must be one of {self._LAYOUTS}, got {layout!r}.")
        c = self.in_shape[0]
        if layout == "table3":
            widths = [c, ch, ch, ch * 2, ch * 2, ch * 4, ch * 4, ch * 8]
        else:
            widths = [c, ch, ch * 2, ch * 2, ch * 4, ch * 4, ch * 8, ch * 8]
        layers = []
        for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
            k, s = (4, 2) if i % 2 else (3, 1)  # every second conv halves the resolution: 32 → 16 → 8 → 4
            layers += [nn.Conv2d(c_in, c_out, k, s, 1), nn.LeakyReLU(0.1)]
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 4 * ch * 8, 1))
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


# ResNet (Table 4).


def _xavier(module: nn.Module, gain: float) -> nn.Module:
    nn.init.xavier_uniform_(module.weight, gain)
    nn.init.zeros_(module.bias)
    return module


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3 conv of a residual branch (Xavier gain √2)."""
    return _xavier(nn.Conv2d(c_in, c_out, 3, 1, 1), math.sqrt(2))


def _conv1(c_in: int, c_out: int) -> nn.Conv2d:
    """1×1 shortcut conv (Xavier gain 1)."""
    return _xavier(nn.Conv2d(c_in, c_out, 1), 1.0)


class GBlock(nn.Module):
    """Up ResBlock: BN → ReLU → up×2 (nearest) → conv 3×3 → BN → ReLU → conv 3×3, plus up×2 → conv 1×1."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Upsample(scale_factor=2), _conv3(c_in, c_out),
            nn.BatchNorm2d(c_out), nn.ReLU(), _conv3(c_out, c_out),
        )  # fmt: skip
        self.shortcut = nn.Sequential(nn.Upsample(scale_factor=2), _conv1(c_in, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class DBlock(nn.Module):
    """D ResBlock: [ReLU →] conv 3×3 → ReLU → conv 3×3 [→ avgpool 2], plus a shortcut that is conv 1×1 [→ avgpool 2]
    when the shape changes and the identity otherwise. ``first=True`` is the "optimized" first block of the
    SN-GAN code: no ReLU before its first conv (it sees the image), always downsamples.
    """

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False):
        super().__init__()
        pool = [nn.AvgPool2d(2)] if down else []
        pre = [] if first else [nn.ReLU()]
        self.residual = nn.Sequential(*pre, _conv3(c_in, c_out), nn.ReLU(), _conv3(c_out, c_out), *pool)
        learnable = down or c_in != c_out
        self.shortcut = nn.Sequential(_conv1(c_in, c_out), *pool) if learnable else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class SNGANResNetGenerator(GeneratorBase):
    """Table 4 (a): z → Linear 4×4×ch → 3 up ResBlocks (ch) → BN → ReLU → conv 3×3 to C → tanh; paper ``ch=256``."""

    def __init__(self, out_shape, z_dim: int = 128, ch: int = 256):
        super().__init__(image_shape(out_shape, "sngan_resnet"), z_dim)
        self.fc = _xavier(nn.Linear(self.z_dim, 4 * 4 * ch), 1.0)
        self.net = nn.Sequential(
            GBlock(ch, ch), GBlock(ch, ch), GBlock(ch, ch),  # 8, 16, 32
            nn.BatchNorm2d(ch), nn.ReLU(), _xavier(nn.Conv2d(ch, self.out_shape[0], 3, 1, 1), 1.0), nn.Tanh(),
        )  # fmt: skip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], -1, 4, 4))


class SNGANResNetDiscriminator(nn.Module):
    """Table 4 (b): optimized down ResBlock (C → ch) → down ResBlock → ResBlock → ResBlock → ReLU → global sum
    pooling → Linear(ch → 1) without bias; paper ``ch=128``. Resolution 32 → 16 → 8 → 8 → 8.

    The final linear layer has no bias (sngan_projection ``dis_models/snresnet_32.py``: ``nobias=True``;
    pytorch-gan-collections the same). basiclab/GNGAN-PyTorch ``resnet.32`` instead averages (``pool="mean"``) and
    keeps the bias (``bias=True``); the GN-GAN preset sets both.
    """

    _POOLS = ("sum", "mean")

    def __init__(self, in_shape, ch: int = 128, bias: bool = False, pool: str = "sum"):
        super().__init__()
        self.in_shape = image_shape(in_shape, "sngan_resnet")
        if pool not in self._POOLS:
            raise GanbenchError(f"sngan_resnet discriminator pool must be one of {self._POOLS}, got {pool!r}.")
        self.pool = pool
        self.net = nn.Sequential(
            DBlock(self.in_shape[0], ch, down=True, first=True),
            DBlock(ch, ch, down=True), DBlock(ch, ch, down=False), DBlock(ch, ch, down=False),
            nn.ReLU(),
        )  # fmt: skip
        self.fc = nn.Linear(ch, 1, bias=bias)
        nn.init.xavier_uniform_(self.fc.weight, 1.0)
        if bias:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        h = h.sum(dim=(2, 3)) if self.pool == "sum" else h.mean(dim=(2, 3))
        return self.fc(h).squeeze(1)
