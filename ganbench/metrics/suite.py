"""The metrics of a generator on its dataset: 2D toys get modes / hq / w1, images get ``metrics.names``.

Used by the training loop (every ``eval_every`` steps) and usable alone: it needs a generator, its dataset and the
run's config, nothing of the loop.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from ganbench.build import generate
from ganbench.metrics.image import evaluate_images
from ganbench.metrics.toy2d import toy_metrics

TOY_PROTOCOL = {"high_quality": "within 3 std of the nearest mode centre",
                "modes": "centres nearest to at least one high-quality sample (VEEGAN/PacGAN)",
                "w1": "exact EMD (POT ot.emd2), Euclidean cost"}


def evaluate(G: torch.nn.Module, dataset, cfg: DictConfig, device: torch.device, seed: int,
             generator: str = "G") -> tuple[dict, dict]:
    """(metrics, protocol) of ``G`` against ``dataset``, drawn under ``torch.manual_seed(seed)`` in a forked RNG.

    The fork means evaluating never shifts the caller's RNG stream (the training trajectory). ``generator`` names
    the weights evaluated ("G" or "ema") in the toy protocol.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if not hasattr(dataset, "centers"):
            return evaluate_images(lambda n: generate(G, G.sample_z(n, device=device)), dataset, cfg.metrics, device)
        n = cfg.eval_samples
        fake = generate(G, G.sample_z(n, device=device))
        real = dataset.sample(n)
    protocol = {"toy": {"samples_fake": n, "samples_real": n, **TOY_PROTOCOL, "generator": generator}}
    return toy_metrics(fake.cpu(), real.cpu(), dataset.centers.cpu(), dataset.std), protocol


def primary_metric(cfg: DictConfig, metrics: dict) -> str | None:
    """The metric that ranks checkpoints (lower is better): w1 on 2D toys, metrics.primary on images."""
    name = "w1" if "w1" in metrics else cfg.metrics.primary
    return name if name in metrics and math.isfinite(metrics[name]) else None
