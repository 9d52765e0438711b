"""Optimizers that take Adam's ``(params, lr, betas)``, so that a recipe switches the optimizer by its ``_target_``
alone (OmegaConf merges a recipe into conf/optim/'s nodes and cannot remove Adam's ``betas`` key)."""

from __future__ import annotations

import torch


class RMSprop(torch.optim.RMSprop):
    """torch's RMSprop (Tieleman & Hinton 2012) with ``betas = (momentum, α)``: β1 is RMSprop's momentum, β2 the
    smoothing constant of its squared-gradient average. (0, 0.99) is torch's default RMSprop, the optimizer of the
    WGAN code (martinarjovsky/WassersteinGAN ``main.py``); unlike Adam it has no bias correction, so its first steps
    are up to 1/√(1−β2) = 10× Adam's."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.0, 0.99), **kwargs):
        super().__init__(params, lr=lr, momentum=float(betas[0]), alpha=float(betas[1]), **kwargs)
