"""Tests compose the real conf/ and shrink it: CPU, tiny widths and batches, a temp output dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from ganbench import config

# One cache for the whole session (the fd_classifier feature net is trained once), never the user's ~/.cache.
os.environ.setdefault("GANBENCH_CACHE", tempfile.mkdtemp(prefix="ganbench-test-cache-"))

# Tiny models run fastest on one thread (several threads spin on ops this small); subprocesses get the same.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]

# Tiny settings per model so that a run of a few steps takes well under a second on 2 CPU cores.
TINY = {
    "mlp": ["model.generator.hidden=32", "model.discriminator.hidden=32"],
    "dcgan": ["model.generator.ch=8", "model.discriminator.ch=8"],
    "dcgan_small": ["model.generator.ch=8", "model.discriminator.ch=8"],
    "sngan_cnn": ["model.generator.ch=16", "model.discriminator.ch=8"],
    "sngan_resnet": ["model.generator.ch=16", "model.discriminator.ch=16"],
}


def tiny_overrides(model: str = "dcgan", steps: int = 3, **extra) -> list[str]:
    base = [f"model={model}", *TINY[model], f"steps={steps}", "batch_size=8", "device=cpu", "progress=false",
            "log_every=1", "sample_every=2", "eval_every=2", "ckpt_every=2", "eval_samples=200",
            "metrics.num_fake=64"]
    return base + [f"{k}={v}" for k, v in extra.items()]


def compose(overrides: list[str]):
    return config.compose(overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env_extra: dict | None = None):
    """Run `ganbench ...` in a fresh process, as a user would."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "ganbench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first (a stable sort): under ``-n 2`` (README's command) the long toy runs start at
    once, one per worker, while the other workers take the short tests, instead of starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def deterministic_cudnn():
    """Deterministic cuDNN kernels, so that graph and eager runs can be compared bit for bit."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
