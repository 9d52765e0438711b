"""Shapes, ranges, errors and gradients of every generator/discriminator pair (tiny widths, CPU)."""

import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ganbench.errors import GanbenchError
from ganbench.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
    SNGANCNNDiscriminator,
    SNGANCNNGenerator,
    SNGANResNetDiscriminator,
    SNGANResNetGenerator,
)

CONF = Path(__file__).parents[1] / "conf" / "model"

# (G, D, G kwargs, D kwargs) at tiny widths
CONV_PAIRS = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator, {"z_dim": 16, "ch": 8}, {"ch": 8}),
    "sngan_cnn": (SNGANCNNGenerator, SNGANCNNDiscriminator, {"z_dim": 16, "ch": 16}, {"ch": 8}),
    "sngan_resnet": (SNGANResNetGenerator, SNGANResNetDiscriminator, {"z_dim": 16, "ch": 8}, {"ch": 8}),
}
MLP_PAIR = (MLPGenerator, MLPDiscriminator, {"z_dim": 2, "hidden": 16, "depth": 2}, {"hidden": 16, "depth": 2})
CASES = [(name, shape) for name in CONV_PAIRS for shape in [(1, 32, 32), (3, 32, 32)]] + [
    ("mlp", (2,)),
    ("mlp", (1, 32, 32)),
]


def build(name, shape):
    G_cls, D_cls, g_kwargs, d_kwargs = MLP_PAIR if name == "mlp" else CONV_PAIRS[name]
    torch.manual_seed(0)
    return G_cls(out_shape=shape, **g_kwargs), D_cls(in_shape=shape, **d_kwargs)


@pytest.mark.parametrize("name,shape", CASES)
def test_shapes_and_range(name, shape):
    G, D = build(name, shape)
    assert G.out_shape == shape
    z = G.sample_z(5)
    assert z.shape == (5, G.z_dim)
    fake = G(z)
    assert fake.shape == (5, *shape)
    assert D(fake).shape == (5,)
    assert D(fake[:1]).shape == (1,)  # squeeze only the score dim
    if len(shape) == 3:
        assert fake.abs().max() <= 1.0


@pytest.mark.parametrize("name,shape", CASES)
def test_discriminator_has_no_normalisation(name, shape):
    _, D = build(name, shape)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    assert not any(isinstance(m, norms) for m in D.modules())
    assert not any(hasattr(m, "parametrizations") for m in D.modules())


@pytest.mark.parametrize("name,shape", CASES)
def test_gradients_reach_every_parameter_of_G_and_D(name, shape):
    G, D = build(name, shape)
    D(G(G.sample_z(4))).mean().backward()
    for net in (G, D):
        for pname, p in net.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, pname


def test_sample_z_uses_the_given_torch_generator():
    G, _ = build("mlp", (2,))
    z1 = G.sample_z(3, generator=torch.Generator().manual_seed(7))
    z2 = G.sample_z(3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z1, z2)
    assert z1.device == next(G.parameters()).device


def test_mlp_generator_on_2d_is_raw_linear():
    G = MLPGenerator((2,), z_dim=2, hidden=8, depth=1)
    assert isinstance(G.out, nn.Identity)
    with torch.no_grad():
        G.net[-1].bias.fill_(5.0)  # a tanh would clamp this to < 1
    assert (G(G.sample_z(4)) > 1.0).all()


def test_mlp_he_init_is_gan_toys_and_keeps_the_signal_scale():
    """init="he" (WGAN-GP's gan_toy.py): He-uniform ReLU layers, LeCun-uniform output layer, zero biases. With it a
    4-layer toy G starts with samples spread over the data's scale; with PyTorch's default init they sit within a few
    hundredths of one point (the default is kept for the tuned presets; the bounds below hold for every seed tried)."""
    for seed in range(5):
        torch.manual_seed(seed)
        he = MLPGenerator((2,), z_dim=2, hidden=128, depth=4, init="he")
        torch.manual_seed(seed)
        default = MLPGenerator((2,), z_dim=2, hidden=128, depth=4)
        linears = [m for m in he.net if isinstance(m, nn.Linear)]
        for m in linears:
            assert (m.bias == 0).all()
            bound = (6.0 if m is not linears[-1] else 3.0) / m.in_features
            assert m.weight.abs().max() <= bound**0.5
            assert m.weight.abs().max() > 0.9 * bound**0.5  # uniform over the whole range, not a narrower one
        z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert he(z).std(0).min() > 0.15
            assert default(z).std(0).max() < 0.05
    D = MLPDiscriminator((2,), hidden=16, depth=2, init="he")
    assert all((m.bias == 0).all() for m in D.net if isinstance(m, nn.Linear))


def test_mlp_rejects_an_unknown_init():
    with pytest.raises(ValueError, match="init must be one of"):
        MLPGenerator((2,), init="xavier")
    with pytest.raises(ValueError, match="init must be one of"):
        MLPDiscriminator((2,), init="xavier")


@pytest.mark.parametrize("name", list(CONV_PAIRS))
@pytest.mark.parametrize("shape", [(2,), (1, 28, 28)])
def test_conv_models_reject_non_32px_image_shapes(name, shape):
    G_cls, D_cls, g_kwargs, d_kwargs = CONV_PAIRS[name]
    with pytest.raises(GanbenchError, match=re.escape(f"model={name}") + ".*" + re.escape(str(shape))):
        G_cls(out_shape=shape, **g_kwargs)
    with pytest.raises(GanbenchError, match=f"model={name}"):
        D_cls(in_shape=shape, **d_kwargs)


def test_sngan_cnn_discriminator_parameter_count_matches_table_3():
    # conv weights k·k·c_in·c_out + biases, CIFAR (C=3), ch=64:
    #   3×3 3→64: 1,792   4×4 64→64: 65,600    3×3 64→128: 73,856   4×4 128→128: 262,272
    #   3×3 128→256: 295,168   4×4 256→256: 1,048,832   3×3 256→512: 1,180,160   linear 4·4·512→1: 8,193
    D = SNGANCNNDiscriminator((3, 32, 32), ch=64)
    assert sum(p.numel() for p in D.parameters()) == 2_935_873


@pytest.mark.parametrize("yaml_name", ["mlp", "dcgan", "sngan_cnn", "sngan_resnet"])
def test_model_yaml_instantiates(yaml_name):
    cfg = OmegaConf.create({"model": OmegaConf.load(CONF / f"{yaml_name}.yaml")})
    shape = (2,) if yaml_name == "mlp" else (3, 32, 32)
    G = instantiate(cfg.model.generator, out_shape=shape)
    D = instantiate(cfg.model.discriminator, in_shape=shape)
    assert G.z_dim == cfg.model.z_dim
    with torch.no_grad():
        assert D(G(G.sample_z(2))).shape == (2,)


def test_sngan_cnn_discriminator_chainer_layout_matches_the_reference_code():
    # chainer-gan-lib SNDCGANDiscriminator / GNGAN-PyTorch dcgan.32: the strided convs double the width.
    #   3×3 3→64: 1,792   4×4 64→128: 131,200   3×3 128→128: 147,584   4×4 128→256: 524,544
    #   3×3 256→256: 590,080   4×4 256→512: 2,097,664   3×3 512→512: 2,359,808   linear 4·4·512→1: 8,193
    D = SNGANCNNDiscriminator((3, 32, 32), ch=64, layout="chainer")
    assert sum(p.numel() for p in D.parameters()) == 5_860_865
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 128, 256, 256, 512, 512]
    assert all(m.negative_slope == 0.1 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    with pytest.raises(GanbenchError, match="layout"):
        SNGANCNNDiscriminator((3, 32, 32), layout="paper")


def test_sngan_cnn_generator_init_leaves_batchnorm_at_its_default():
    # Chainer, GNGAN-PyTorch and pytorch-gan-collections leave BatchNorm at γ = 1, β = 0; weights ~ N(0, 0.02).
    torch.manual_seed(0)
    G = SNGANCNNGenerator((3, 32, 32), ch=64)
    for m in G.modules():
        if isinstance(m, nn.BatchNorm2d):
            torch.testing.assert_close(m.weight.data, torch.ones_like(m.weight))
            torch.testing.assert_close(m.bias.data, torch.zeros_like(m.bias))
    assert abs(G.fc.weight.std().item() - 0.02) < 1e-3 and G.fc.bias.abs().max() == 0


def test_sngan_resnet_discriminator_last_layer_has_no_bias_and_sums():
    # sngan_projection snresnet_32.py: l5 = SNLinear(ch, 1, nobias=True) after a global sum.
    torch.manual_seed(0)
    D = SNGANResNetDiscriminator((3, 32, 32), ch=8)
    assert D.fc.bias is None
    x = torch.randn(3, 3, 32, 32)
    h = D.net(x)
    torch.testing.assert_close(D(x), h.sum(dim=(2, 3)) @ D.fc.weight[0])
    # GNGAN-PyTorch resnet.32: mean over the 8×8 map and a bias.
    D.pool, D.fc = "mean", nn.Linear(8, 1)
    torch.testing.assert_close(D(x), h.mean(dim=(2, 3)) @ D.fc.weight[0] + D.fc.bias)
    assert SNGANResNetDiscriminator((3, 32, 32), ch=8, bias=True, pool="mean").fc.bias is not None
    with pytest.raises(GanbenchError, match="pool"):
        SNGANResNetDiscriminator((3, 32, 32), ch=8, pool="max")
