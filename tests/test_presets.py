"""Paper presets (conf/experiment): each composes with its source's settings and trains for two steps on the CPU."""

from __future__ import annotations

import pytest
from conftest import REPO, compose, read_metrics
from omegaconf import OmegaConf

from ganbench import config
from ganbench.train import run

# preset: (dataset, model, loss, constraint, optimizer, {key: value} of what the preset sets beyond recipe=paper's
# setting of its pair, which test_paper_presets_train_at_their_pairs_recipe checks instead).
PRESETS = {
    "sngan_cnn_cifar10": ("cifar10", "SNGANCNN", "Hinge", "SpectralNorm", "torch.optim.Adam", {
        "steps": 100_000, "ema_decay": 0.0}),
    "wgan_gp_cnn_cifar10": ("cifar10", "SNGANCNN", "WGANGP", "NoConstraint", "torch.optim.Adam", {
        "loss.weight": 10.0, "steps": 100_000}),
    "wgan_clip_dcgan": ("cifar10", "DCGAN", "WGAN", "WeightClip", "ganbench.optim.RMSprop", {
        "constraint.c": 0.01, "model.discriminator.batchnorm": True, "steps": 100_000}),
    "gngan_cnn_cifar10": ("cifar10", "SNGANCNN", "SGAN", "GradNorm", "torch.optim.Adam", {
        "loss.saturating": False, "model.discriminator.layout": "chainer", "steps": 200_000, "ema_decay": 0.9999}),
    "gngan_resnet_cifar10": ("cifar10", "SNGANResNet", "Hinge", "GradNorm", "torch.optim.Adam", {
        "optim.lr_d": 4e-4, "optim.decay": "linear", "n_dis": 5, "steps": 200_000, "ema_decay": 0.9999}),
    "ganqp_dcgan": ("cifar10", "DCGAN", "GANQP", "NoConstraint", "torch.optim.Adam", {
        "loss.lam": 10.0, "loss.norm": "l2", "steps": 100_000}),
    "wgan_div_dcgan": ("cifar10", "DCGAN", "WGANDiv", "NoConstraint", "torch.optim.Adam", {
        "loss.k": 2.0, "loss.p": 6.0, "loss.at": "interpolates", "steps": 200_000}),
}
SETTING = ("optim.g._target_", "optim.lr_g", "optim.lr_d", "optim.betas", "optim.decay", "n_dis", "critic_schedule",
           "batch_size", "g_batch_size")
# The toy presets of the four pairs PacGAN's bar is checked on (scripts/toy_bar.py): loss, constraint, and what
# each changes of its dataset's shared setting (grid25_study, ring8_study).
TOY_PAIRS = {
    "grid25_study": ("Hinge", "SpectralNorm", {"model.generator.depth": 3, "batch_size": 256, "steps": 10_000}),
    "grid25_hinge_sn": ("Hinge", "SpectralNorm", {"model.generator.depth": 4, "batch_size": 256, "steps": 10_000}),
    "grid25_ganqp": ("GANQP", "NoConstraint", {"model.generator.depth": 4, "model.discriminator.hidden": 256,
                                              "batch_size": 1024, "steps": 10_000, "optim.decay_to": 0.1,
                                              "instance_noise.std": 0.5, "instance_noise.until": 0.6}),
    "grid25_wgan_gp": ("WGANGP", "NoConstraint", {"model.generator.depth": 4, "batch_size": 256, "steps": 15_000,
                                                "loss.weight": 0.1}),
    "grid25_wgan_gn": ("WGAN", "GradNorm", {"model.generator.depth": 4, "model.discriminator.depth": 4,
                                            "batch_size": 1024, "steps": 10_000, "optim.decay_to": 0.1,
                                            "n_dis": 5}),
    "ring8_wgan_gp": ("WGANGP", "NoConstraint", {"model.generator.depth": 3, "batch_size": 256, "steps": 5_000,
                                               "loss.weight": 0.1}),
    "ring8_wgan_gn": ("WGAN", "GradNorm", {"model.generator.depth": 3, "batch_size": 256, "steps": 5_000,
                                         "optim.decay_to": 0.1}),
    "ring8_ganqp": ("GANQP", "NoConstraint", {"model.generator.depth": 3, "batch_size": 256, "steps": 10_000}),
}
ALL_PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_composes_and_validates(name):
    cfg = compose([f"experiment={name}"])
    config.validate(cfg)
    first_line = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first_line == "# @package _global_"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_settings(name):
    dataset, model, loss, constraint, optim, values = PRESETS[name]
    cfg = compose([f"experiment={name}"])
    assert cfg.dataset._target_ == f"ganbench.data.{dataset}"
    assert cfg.model.generator._target_ == f"ganbench.models.{model}Generator"
    assert cfg.model.discriminator._target_ == f"ganbench.models.{model}Discriminator"
    assert cfg.loss._target_ == f"ganbench.losses.{loss}"
    assert cfg.constraint._target_ == f"ganbench.constraints.{constraint}"
    assert cfg.optim.g._target_ == cfg.optim.d._target_ == optim
    for key, expected in values.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == expected, (key, got, expected)
    # The optimizers really get the preset's learning rates and betas (interpolated into their nodes).
    assert cfg.optim.g.lr == cfg.optim.lr_g and cfg.optim.d.lr == cfg.optim.lr_d
    assert list(cfg.optim.d.betas) == list(cfg.optim.betas)
    header = (REPO / "conf" / "experiment" / f"{name}.yaml").read_text().split("defaults:")[0]
    assert "arXiv" in header  # the file names its source


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_paper_presets_train_at_their_pairs_recipe(name):
    """A paper preset states its training setting once, in its pair's recipe files: `experiment=X` and
    `loss=L constraint=C recipe=paper` agree on it, up to what the preset lists as its own."""
    cfg = compose([f"experiment={name}"])
    recipe = compose([f"loss={_choice(name, 'loss')}", f"constraint={_choice(name, 'constraint')}", "recipe=paper"])
    own = PRESETS[name][5]
    for key in SETTING:
        if key not in own:
            a, b = OmegaConf.select(cfg, key), OmegaConf.select(recipe, key)
            assert (OmegaConf.to_container(a) if OmegaConf.is_config(a) else a) == \
                   (OmegaConf.to_container(b) if OmegaConf.is_config(b) else b), (key, a, b)


def _choice(preset: str, group: str) -> str:
    """The option a preset picks for a group (its `override /group: option` line)."""
    text = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    return next(line.split(":")[1].split("#")[0].strip() for line in text.splitlines()
                if line.strip().startswith(f"- override /{group}:"))


@pytest.mark.parametrize("name", sorted(TOY_PAIRS))
def test_toy_pair_presets_build_on_the_shared_setting(name):
    loss, constraint, values = TOY_PAIRS[name]
    cfg = compose([f"experiment={name}"])
    assert cfg.loss._target_ == f"ganbench.losses.{loss}"
    assert cfg.constraint._target_ == f"ganbench.constraints.{constraint}"
    for key, expected in values.items():
        assert OmegaConf.select(cfg, key) == expected, key
    shared = {"dataset._target_": f"ganbench.data.{name.split('_')[0]}", "model.generator.hidden": 128,
              "model.discriminator.depth": 3, "model.z_dim": 2, "n_dis": 3, "optim.lr_g": 1e-3, "optim.lr_d": 2e-3,
              "optim.decay": "linear", "ema_decay": 0.99, "eval_samples": 2500,
              "instance_noise.std": 0.0}
    for key, expected in shared.items():
        if key not in values:  # what the preset changes is checked above
            assert OmegaConf.select(cfg, key) == expected, key
    assert list(cfg.optim.betas) == [0.0, 0.9]
    assert compose([f"experiment={name}", "loss=hinge", "batch_size=8"]).batch_size == 8  # still overridable


def test_command_line_overrides_beat_the_preset():
    cfg = compose(["experiment=sngan_cnn_cifar10", "dataset=mnist_mini", "steps=7", "n_dis=3"])
    assert cfg.dataset._target_ == "ganbench.data.mnist_mini"
    assert (cfg.steps, cfg.n_dis, cfg.g_batch_size) == (7, 3, 128)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_trains_two_steps(tmp_path, name):
    """Each preset's own models, loss, constraint, optimizer and schedule, shrunk: tiny widths, mnist_mini, CPU."""
    cfg = compose([f"experiment={name}", "dataset=mnist_mini", "model.generator.ch=8", "model.discriminator.ch=8",
                   "device=cpu", "batch_size=8", "g_batch_size=8", "steps=2", "progress=false", "log_every=1",
                   "sample_every=2", "eval_every=2", "ckpt_every=2",
                   "metrics.num_fake=16", "metrics.num_real=16"])  # the CIFAR presets' FID: Inception on a CPU
    run(cfg, tmp_path)
    record = read_metrics(tmp_path)
    assert record["status"] == "completed" and record["step"] == 2
    assert record["config"]["loss"]["_target_"] == cfg.loss._target_
    assert record["config"]["n_dis"] == cfg.n_dis
    for metric in record["config"]["metrics"]["names"]:  # every metric ran, or says why it was skipped
        assert metric in record["metrics"] or "skipped" in record["protocol"][metric], (metric, record["protocol"])
