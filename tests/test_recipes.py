"""Recipes (conf/recipe): `recipe=paper` gives each loss and constraint its source's settings; the default
`recipe=shared` is the one shared setting of conf/train.yaml + conf/optim/adam.yaml for every pair."""

from __future__ import annotations

import pytest
from conftest import REPO, compose
from omegaconf import OmegaConf

from ganbench import config

LOSSES = ("sgan", "wgan", "wgan_gp", "hinge", "ganqp", "wgan_div", "lsgan")
CONSTRAINTS = ("none", "clip", "sn", "gp", "r1", "gn", "gran")
SHARED = {"optim.lr_g": 2e-4, "optim.lr_d": 2e-4, "optim.betas": [0.0, 0.9], "n_dis": 1, "batch_size": 64,
          "g_batch_size": None}
# The sources' values, written out here by hand (the recipe files must reproduce them exactly).
ADAM_2E4 = {"optim.lr_g": 2e-4, "optim.lr_d": 2e-4, "optim.betas": [0.5, 0.999]}
LOSS = {
    "sgan": {**ADAM_2E4, "n_dis": 1, "batch_size": 128, "g_batch_size": None},
    "wgan": {"n_dis": 5, "batch_size": 64, "g_batch_size": None},
    "wgan_gp": {"loss.weight": 10.0, "optim.lr_g": 1e-4, "optim.lr_d": 1e-4, "optim.betas": [0.5, 0.9],
                "n_dis": 5, "batch_size": 64, "g_batch_size": None},
    "hinge": {**ADAM_2E4, "n_dis": 1, "batch_size": 64, "g_batch_size": 128},
    "ganqp": {**ADAM_2E4, "n_dis": 2, "batch_size": 64, "g_batch_size": None},
    "wgan_div": {"loss.k": 2.0, "loss.p": 6.0, "optim.lr_g": 2e-4, "optim.lr_d": 2e-4, "optim.betas": [0.0, 0.9],
                 "n_dis": 4, "batch_size": 64, "g_batch_size": None},
    "lsgan": {**ADAM_2E4, "n_dis": 1, "batch_size": 64, "g_batch_size": None},
}
CONSTRAINT = {
    "none": {},
    "clip": {"constraint.c": 0.01, "optim.lr_g": 5e-5, "optim.lr_d": 5e-5, "optim.betas": [0.0, 0.99],
             "n_dis": 5, "batch_size": 64, "g_batch_size": None},
    "sn": {"constraint.n_power_iterations": 1, **ADAM_2E4, "n_dis": 1, "batch_size": 64, "g_batch_size": 128},
    "gp": {"constraint.weight": 10.0, "optim.lr_g": 1e-4, "optim.lr_d": 1e-4, "optim.betas": [0.5, 0.9],
           "n_dis": 5, "batch_size": 64, "g_batch_size": None},
    "r1": {"constraint.gamma": 10.0, "optim.lr_g": 1e-4, "optim.lr_d": 1e-4, "optim.betas": [0.0, 0.99],
           "n_dis": 1, "batch_size": 64, "g_batch_size": None},
    "gn": {"optim.lr_g": 2e-4, "optim.lr_d": 2e-4, "optim.betas": [0.0, 0.9], "n_dis": 1, "batch_size": 64,
           "g_batch_size": 128},
    "gran": {},  # no public code and no verified setting: the loss's recipe alone
}
NORMALIZING = ("gn",)  # replaces a loss's own penalty: its setting wins over a penalty loss's too
PENALTY_LOSSES = ("wgan_gp", "wgan_div")  # Lipschitz methods of their own: their setting wins over the constraint's
PAIRS = [(loss, constraint) for loss in LOSSES for constraint in CONSTRAINTS]


def values(cfg, keys):
    return {k: OmegaConf.select(cfg, k) for k in keys}


def test_tables_cover_every_option():
    assert set(LOSSES) == {p.stem for p in (REPO / "conf" / "loss").glob("*.yaml")}
    assert set(CONSTRAINTS) == {p.stem for p in (REPO / "conf" / "constraint").glob("*.yaml")}
    recipe = REPO / "conf" / "recipe"
    loss_files = {p.stem for p in (recipe / "loss" / "paper").glob("*.yaml")}
    penalty_files = {p.stem for p in (recipe / "penalty_loss" / "paper").glob("*.yaml")}
    assert penalty_files == set(PENALTY_LOSSES) and loss_files | penalty_files == set(LOSS)
    constraint_files = {p.stem for p in (recipe / "constraint" / "paper").glob("*.yaml")}
    normalizing_files = {p.stem for p in (recipe / "normalizing" / "paper").glob("*.yaml")}
    assert normalizing_files == set(NORMALIZING)
    assert constraint_files | normalizing_files == {k for k, v in CONSTRAINT.items() if v}
    for path in recipe.rglob("*.yaml"):
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_" and len(lines) > 2 and lines[1].startswith("# "), path


@pytest.mark.parametrize("loss,constraint", PAIRS)
def test_shared_default_is_unchanged(loss, constraint):
    plain = compose([f"loss={loss}", f"constraint={constraint}"])
    shared = compose([f"loss={loss}", f"constraint={constraint}", "recipe=shared"])
    assert plain == shared
    assert values(plain, SHARED) == SHARED
    assert OmegaConf.select(plain, "optim.g._target_") == "torch.optim.Adam"


@pytest.mark.parametrize("loss,constraint", PAIRS)
def test_paper_recipe_values(loss, constraint):
    expected = {**LOSS[loss], **CONSTRAINT[constraint]}  # the constraint's setting wins over a plain loss's
    if loss in PENALTY_LOSSES and constraint not in NORMALIZING:
        expected = {**CONSTRAINT[constraint], **LOSS[loss]}
    base = compose([f"loss={loss}", f"constraint={constraint}"])
    cfg = compose([f"loss={loss}", f"constraint={constraint}", "recipe=paper"])
    config.validate(cfg)
    assert values(cfg, expected) == expected
    for key in set(SHARED) - set(expected):  # what no source sets stays shared
        assert OmegaConf.select(cfg, key) == SHARED[key]
    for key in ("dataset", "model", "metrics", "steps", "seed", "ema_decay"):
        assert cfg[key] == base[key]


def test_overrides_and_presets_beat_the_recipe():
    cfg = compose(["loss=wgan_gp", "constraint=none", "recipe=paper", "n_dis=3", "optim.lr_d=3e-4"])
    assert cfg.n_dis == 3 and cfg.optim.lr_d == 3e-4 and cfg.optim.lr_g == 1e-4
    cfg = compose(["recipe=paper", "experiment=gngan_resnet_cifar10"])
    assert cfg.n_dis == 5 and cfg.optim.lr_d == 4e-4 and cfg.optim.decay == "linear"


def test_paper_recipe_with_torch_rmsprop():
    cfg = compose(["loss=wgan", "constraint=clip", "recipe=paper", "optim=rmsprop"])
    config.validate(cfg)
    assert OmegaConf.select(cfg, "optim.d._target_") == "torch.optim.RMSprop"
    assert cfg.optim.lr_d == 5e-5 and cfg.n_dis == 5 and "betas" not in cfg.optim.d
