"""Run output: TensorBoard scalars/images/hparams, sample grids on disk, a console progress bar.

(Named ``logger`` rather than DESIGN.md's ``logging`` so that it never shadows the standard library module.)
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch
import torchvision.utils as vutils
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ganbench import checkpoint

log = logging.getLogger("ganbench")


def scatter_image(points: Tensor, centers: Tensor | None = None, size: int = 256) -> Tensor:
    """Render 2D points as a (3, size, size) float image in [0, 1]: log-density in white, mode centres in red.

    The view spans the centres' extent plus a margin, so samples far outside are clipped to the border.
    """
    points = points.detach().float().cpu()
    extent = float(centers.abs().max()) + 1.0 if centers is not None else float(points.abs().max()) + 0.5
    ij = ((points / extent + 1) / 2 * (size - 1)).round().long().clamp_(0, size - 1)
    counts = torch.zeros(size * size)
    counts.index_add_(0, (size - 1 - ij[:, 1]) * size + ij[:, 0], torch.ones(len(ij)))
    density = torch.log1p(counts).view(size, size)
    density = density / density.max().clamp_min(1e-8)
    img = density.expand(3, size, size).clone()
    if centers is not None:
        cij = ((centers.float().cpu() / extent + 1) / 2 * (size - 1)).round().long().clamp_(1, size - 2)
        for x, y in cij.tolist():
            r = size - 1 - y
            img[0, r - 1:r + 2, x - 1:x + 2] = 1.0
            img[1:, r - 1:r + 2, x - 1:x + 2] *= 0.3
    return img


class RunLogger:
    """TensorBoard writer plus the sample grids under ``samples/``.

    ``purge_step`` (the step after a resumed checkpoint) drops events a crashed run wrote past its checkpoint, so a
    resumed run has each logged step exactly once.
    """

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.run_dir = run_dir
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def samples(self, images: Tensor, step: int, centers: Tensor | None = None) -> Path:
        """Save a grid of image samples (N,C,H,W in [-1,1]) or a scatter of 2D samples (N,2)."""
        if images.dim() == 2:
            grid = scatter_image(images, centers)
        else:
            grid = vutils.make_grid(images.detach().float().cpu(), nrow=int(math.sqrt(len(images))),
                                    normalize=True, value_range=(-1, 1), padding=2)
        path = self.run_dir / "samples" / f"step_{step:07d}.png"
        # atomically, as checkpoints: a kill or a full disk mid-write leaves no truncated PNG (WriteFailed: one line)
        checkpoint.atomic_write_bytes(path, lambda f: vutils.save_image(grid, f, format="png"))
        self.writer.add_image("samples", grid, step)
        return path

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        finite = {f"hparam/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and math.isfinite(float(v))}
        self.writer.add_hparams(clean, finite, run_name=".")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class Progress:
    """A tqdm bar on a terminal; on a pipe, one plain line every ``log_every`` steps via the logger."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)
        self.total = total

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def report(self, step: int, values: dict[str, float], rate: float) -> None:
        short = {k.split("/", 1)[-1] if k.startswith("loss/") else k: v for k, v in values.items()
                 if k in ("loss/d", "loss/g")}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in short.items()}, refresh=False)
        else:
            parts = " ".join(f"{k}={v:.4g}" for k, v in short.items())
            log.info(f"step {step}/{self.total}  {parts}  {rate:.2f} steps/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
