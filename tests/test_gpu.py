"""CUDA: every loss × constraint pair trains on the GPU (grid25 and mnist_mini), data resident on the device.

Marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false (the 2-core CI machine); run on a GPU machine
with the same README test command, or ``python -m pytest -q -m gpu``.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose, tiny_overrides
from test_train import CONSTRAINTS, LOSSES, assert_run_ok

from ganbench.build import build
from ganbench.train import run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def on_cuda(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("device=")] + ["device=cuda"]


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_grid25_cuda(tmp_path, loss, constraint):
    cfg = compose(on_cuda(tiny_overrides("mlp", steps=3, dataset="grid25", loss=loss, constraint=constraint)))
    metrics = run(cfg, tmp_path)
    assert_run_ok(tmp_path, 3)
    assert 0 <= metrics["modes"] <= 25 and math.isfinite(metrics["w1"])


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_mnist_mini_cuda(tmp_path, loss, constraint):
    cfg = compose(on_cuda(tiny_overrides("dcgan", steps=2, loss=loss, constraint=constraint)))
    metrics = run(cfg, tmp_path)
    assert_run_ok(tmp_path, 2)
    assert math.isfinite(metrics["fd_classifier"])


def test_models_and_data_live_on_the_gpu():
    cfg = compose(on_cuda(tiny_overrides("dcgan", steps=2)))
    r = build(cfg, torch.device("cuda"))
    assert r.dataset.device.type == "cuda" and r.dataset.images.dtype == torch.uint8
    assert all(p.device.type == "cuda" for p in [*r.G.parameters(), *r.D.parameters()])
