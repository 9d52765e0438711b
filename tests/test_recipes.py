"""Recipes (conf/recipe): `recipe=paper` gives each loss and constraint its source's setting, one file per method;
the default `recipe=shared` is the one shared setting of conf/train.yaml + conf/optim/adam.yaml for every pair.

The methods come from conf/loss and conf/constraint; the expected setting of a pair is read from its two recipe
files (the loss's, then the constraint's on top), so a recipe's values are written once, in its file. The clip
system, whose optimizer and critic bursts matter for it to train at all, is also checked against its source."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, compose, run_cli
from omegaconf import OmegaConf

from ganbench import config
from ganbench.build import build, critic_steps

CONF = REPO / "conf"
LOSSES = sorted(p.stem for p in (CONF / "loss").glob("*.yaml"))
CONSTRAINTS = sorted(p.stem for p in (CONF / "constraint").glob("*.yaml"))
PAIRS = [(loss, constraint) for loss in LOSSES for constraint in CONSTRAINTS]
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
RECIPES = {"loss": CONF / "recipe" / "loss" / "paper", "constraint": CONF / "recipe" / "constraint" / "paper",
           "model": CONF / "recipe" / "model" / "paper", "system": CONF / "recipe" / "system" / "paper"}
# What a recipe may set: the training setting. The methods' own knobs (penalty weights, c, ...) are their YAMLs'.
# The part of a constraint's setting that depends on the model (conf/recipe/model/paper/<constraint>_<model>.yaml)
# may set the model's options: the clip recipe's BatchNorm DCGAN critic, which a clipped critic needs to train.
# So may a published system's own part (conf/recipe/system/paper/<loss>_<constraint>_<model>.yaml): the BatchNorm D
# of DCGAN and of LSGAN.
SETTING = {"optim", "n_dis", "critic_schedule", "batch_size", "g_batch_size"}
SHARED = {"optim.lr_g": 2e-4, "optim.lr_d": 2e-4, "optim.betas": [0.0, 0.9], "n_dis": 1, "batch_size": 64,
          "g_batch_size": None, "critic_schedule.burst": 0, "optim.g._target_": "torch.optim.Adam"}


def recipe_file(kind: str, name: str):
    path = RECIPES[kind] / f"{name}.yaml"
    return OmegaConf.load(path) if path.exists() else OmegaConf.create()


def leaves(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        out.update(leaves(v, f"{prefix}{k}.") if OmegaConf.is_dict(v) else {f"{prefix}{k}": v})
    return out


def values(cfg, keys):
    out = {}
    for k in keys:
        v = OmegaConf.select(cfg, k)
        out[k] = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
    return out


def test_recipe_files_belong_to_a_method_and_name_their_source():
    assert set(LOSSES).isdisjoint(CONSTRAINTS)  # the two recipe folders never mean the same name
    for kind, names in (("loss", LOSSES), ("constraint", CONSTRAINTS)):
        for path in RECIPES[kind].glob("*.yaml"):
            assert path.stem in names, f"{path} is the recipe of no {kind}"
            lines = path.read_text().splitlines()
            assert lines[0] == "# @package _global_" and lines[1].startswith("# "), path
            assert "arXiv" in path.read_text(), f"{path} names no source"
            recipe = OmegaConf.load(path)
            assert set(recipe.keys()) <= SETTING, f"{path} sets more than the training setting"
    assert (RECIPES["constraint"] / "clip.yaml").exists() and (RECIPES["loss"] / "wgan_gp.yaml").exists()
    names = {"model": {f"{c}_{m}": [f"constraint={c}", f"model={m}"] for c in CONSTRAINTS for m in MODELS},
             "system": {f"{loss}_{c}_{m}": [f"loss={loss}", f"constraint={c}", f"model={m}"]
                        for loss in LOSSES for c in CONSTRAINTS for m in MODELS}}
    assert (RECIPES["model"] / "clip_dcgan.yaml").exists() and (RECIPES["system"] / "sgan_none_dcgan.yaml").exists()
    for kind, known in names.items():
        for path in RECIPES[kind].glob("*.yaml"):
            assert path.stem in known, f"{path} is named after no {kind} in conf/"
            assert path.read_text().startswith("# @package _global_\n# ") and "arXiv" in path.read_text(), path
            options = OmegaConf.load(path)
            assert set(options.keys()) == {"model"}, f"{path} sets more than the model's options"
            cfg = compose([*known[path.stem], "recipe=paper", "device=cpu"])
            assert values(cfg, leaves(options)) == leaves(options), path  # it is applied
            build(cfg, torch.device("cpu"))  # the options exist on that model
    for model in MODELS:  # every model builds under the clip recipe (a critic without the option keeps its own)
        build(compose(["loss=wgan", "constraint=clip", "recipe=paper", f"model={model}", "device=cpu", *(
            ["dataset=grid25"] if model == "mlp" else [])]), torch.device("cpu"))


@pytest.mark.parametrize("loss,constraint", PAIRS)
def test_shared_default_is_unchanged(loss, constraint):
    plain = compose([f"loss={loss}", f"constraint={constraint}"])
    shared = compose([f"loss={loss}", f"constraint={constraint}", "recipe=shared"])
    assert plain == shared
    assert values(plain, SHARED) == SHARED


@pytest.mark.parametrize("loss,constraint", PAIRS)
def test_paper_recipe_is_the_loss_file_then_the_constraint_file(loss, constraint):
    expected = leaves(OmegaConf.merge(recipe_file("loss", loss), recipe_file("constraint", constraint),
                                      recipe_file("model", f"{constraint}_dcgan_small"),
                                      recipe_file("system", f"{loss}_{constraint}_dcgan_small")))
    base = compose([f"loss={loss}", f"constraint={constraint}"])
    cfg = compose([f"loss={loss}", f"constraint={constraint}", "recipe=paper"])
    config.validate(cfg)
    assert values(cfg, expected) == {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                                     for k, v in expected.items()}
    for key in set(SHARED) - set(expected):  # what no source sets stays shared
        assert values(cfg, [key]) == values(base, [key]), key
    for key in ("dataset", "loss", "constraint", "metrics", "steps", "seed", "ema_decay"):
        assert cfg[key] == base[key]  # a recipe sets the training setting only
    model = {k: v for k, v in leaves(cfg.model, "model.").items() if k not in expected}
    assert model == {k: v for k, v in leaves(base.model, "model.").items() if k not in expected}


def test_the_clip_recipe_is_the_wgan_code_setting():
    """Arjovsky et al. 2017 Algorithm 1 and martinarjovsky/WassersteinGAN main.py: torch's RMSprop (no momentum,
    smoothing 0.99) at 5e-5 for both nets, 5 critic steps, 100 for the first 25 G steps and every 500th, batch 64."""
    cfg = compose(["loss=wgan", "constraint=clip", "recipe=paper", "device=cpu", "model.generator.ch=8",
                   "model.discriminator.ch=8"])
    r = build(cfg, torch.device("cpu"))
    for opt in (r.opt_g, r.opt_d):
        assert isinstance(opt, torch.optim.RMSprop)
        group = opt.param_groups[0]
        assert (group["lr"], group["momentum"], group["alpha"], group["centered"]) == (5e-5, 0.0, 0.99, False)
    assert cfg.constraint.c == 0.01 and cfg.batch_size == 64
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in r.D.modules()) == 2  # the code's critic: BN but first
    assert [critic_steps(cfg, s) for s in (0, 24, 25, 26, 499, 500, 501, 1000)] == [100, 100, 5, 5, 5, 100, 5, 100]
    assert sum(critic_steps(cfg, s) for s in range(4000)) == 25 * 100 + 7 * 100 + (4000 - 32) * 5


def test_critic_schedule_is_off_by_default_and_for_every_other_pair():
    cfg = compose(["loss=wgan", "constraint=clip"])
    assert {critic_steps(cfg, s) for s in range(1001)} == {1}
    cfg = compose(["loss=hinge", "n_dis=2", "critic_schedule.burst=7", "critic_schedule.first=2",
                   "critic_schedule.every=0"])
    assert [critic_steps(cfg, s) for s in (0, 1, 2, 500, 1000)] == [7, 7, 2, 2, 2]
    for loss, constraint in PAIRS:
        if constraint != "clip":
            assert compose([f"loss={loss}", f"constraint={constraint}", "recipe=paper"]).critic_schedule.burst == 0


def test_overrides_and_presets_beat_the_recipe():
    cfg = compose(["loss=wgan_gp", "constraint=none", "recipe=paper", "n_dis=3", "optim.lr_d=3e-4"])
    assert cfg.n_dis == 3 and cfg.optim.lr_d == 3e-4 and cfg.optim.lr_g == 1e-4
    # An optimizer chosen on the command line beats the recipe's (the rest of the paper setting stays) ...
    cfg = compose(["loss=wgan", "constraint=clip", "recipe=paper", "optim=adam"])
    assert (cfg.optim.g._target_, cfg.optim.d._target_, cfg.optim.lr_d, cfg.n_dis) == ("torch.optim.Adam",) * 2 + (
        5e-5, 5)
    assert config.pin_optimizer(["loss=wgan", "constraint=clip", "recipe=paper"]) == [
        "loss=wgan", "constraint=clip", "recipe=paper"]  # ... and without a choice the recipe's is kept
    assert config.prepare_argv(["experiment=wgan_clip_dcgan", "dataset=mnist_mini", "optim=adam"])[-2:] == [
        "optim.g._target_=torch.optim.Adam", "optim.d._target_=torch.optim.Adam"]  # what Hydra gets, and records
    cfg = compose(["recipe=paper", "experiment=gngan_resnet_cifar10"])
    assert cfg.n_dis == 5 and cfg.optim.lr_d == 4e-4 and cfg.optim.decay == "linear"
    cfg = compose(["loss=wgan", "constraint=clip", "recipe=paper", "critic_schedule.burst=0",
                   "optim.g._target_=torch.optim.Adam", "optim.d._target_=torch.optim.Adam"])
    assert cfg.critic_schedule.burst == 0 and cfg.optim.d._target_ == "torch.optim.Adam"


def test_cfg_job_shows_the_recipe(tmp_path):
    """What a user types to see a recipe: the optimizer it switches to and its critic bursts are in the printout."""
    out = run_cli(["train", "loss=wgan", "constraint=clip", "recipe=paper", "--cfg", "job"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = OmegaConf.create(out.stdout)
    assert job.optim.d._target_ == "ganbench.optim.RMSprop" and job.optim.lr_d == 5e-5
    assert job.model.discriminator.batchnorm is True
    assert (job.n_dis, job.critic_schedule.burst, job.critic_schedule.first, job.critic_schedule.every) == (5, 100, 25,
                                                                                                            500)


def test_only_the_dcgan_and_lsgan_systems_get_the_batchnorm_discriminator():
    """recipe=paper: sgan and lsgan without a constraint are the DCGAN and LSGAN papers' systems, BatchNorm in D;
    the same losses with a Lipschitz constraint, and the other losses without one, keep D without BatchNorm (their
    sources' critics have none)."""
    def batchnorm(*args):
        return compose([*args, "recipe=paper"]).model.discriminator.batchnorm
    for loss in ("sgan", "lsgan"):
        assert batchnorm(f"loss={loss}", "constraint=none") is True, loss
        assert batchnorm(f"loss={loss}", "constraint=none", "model=dcgan") is True, loss
    for loss, constraint in (("sgan", "sn"), ("sgan", "gp"), ("lsgan", "sn"), ("lsgan", "gn"), ("wgan_gp", "none"),
                             ("wgan_div", "none"), ("ganqp", "none"), ("hinge", "sn")):
        assert batchnorm(f"loss={loss}", f"constraint={constraint}") is False, (loss, constraint)
    for loss in ("sgan", "lsgan"):  # recipe=shared
        assert compose([f"loss={loss}", "constraint=none"]).model.discriminator.batchnorm is False, loss
