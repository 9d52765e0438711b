"""Objects from config: the device, one ``instantiate`` with one-line errors, a whole run's objects, and G's samples.

A building block: it knows the config's shape, nothing of the training loop. ``ganbench eval``, ``sample``,
``features`` and ``bench`` use it as the loop does.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from ganbench import distributed, rundir
from ganbench.errors import GanbenchError
from ganbench.step import InstanceNoise

log = logging.getLogger("ganbench")


def resolve_device(name: str) -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``; a missing CUDA is one sentence.

    Under torchrun, ``cuda`` is this process's own GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    world = distributed.current()
    if name == "cuda" and world.active and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GanbenchError(f"device={name} was asked for but CUDA is not available here; "
                            f"use device=cpu or device=auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GanbenchError(f"device={name} is not a device; use auto, cpu, cuda or cuda:N.") from None


def make(node: DictConfig, what: str, **kwargs):
    """``instantiate`` whose failures are one sentence (Hydra wraps the GanbenchErrors of our factories)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, GanbenchError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        detail = str(e.__cause__ or e).strip().splitlines()
        raise GanbenchError(f"cannot build the {what} from its config ({detail[-1] if detail else e}).") from None


def generate(G: torch.nn.Module, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """G(z) in eval mode, no grad, in chunks; G's train/eval mode is restored."""
    was_training = G.training
    G.eval()
    with torch.no_grad():
        out = torch.cat([G(chunk) for chunk in z.split(batch)])
    G.train(was_training)
    return out


@dataclass
class Run:
    """Everything a run builds from its config; what a checkpoint saves and restores."""

    cfg: DictConfig
    device: torch.device
    dataset: object
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module | None
    loss: object
    constraint: object
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    schedulers: list = field(default_factory=list)
    z_fixed: torch.Tensor | None = None
    step: int = 0
    history: list = field(default_factory=list)
    world: distributed.World = field(default_factory=distributed.current)  # torchrun's ranks, or a world of one
    noise: InstanceNoise | None = None  # instance noise on D's inputs (cfg.instance_noise.std > 0)

    @property
    def sampler(self) -> torch.nn.Module:
        """The generator that draws samples and metrics: the EMA copy when the run keeps one."""
        return self.G_ema if self.G_ema is not None else self.G

    def state(self) -> dict:
        """The checkpoint's content; under torchrun a collective (every rank's RNG state goes to rank 0)."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []}
        ranks = {"rng_ranks": self.world.gather(rng)} if self.world.active else {}
        return {
            "step": self.step,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "z_fixed": self.z_fixed.cpu(),
            "rng": rng, **ranks,
            "history": json.dumps(self.history),
            "identity": rundir.identity(self.cfg),
        }

    def restore(self, state: dict, path: Path) -> None:
        rundir.check_resume_identity(state.get("identity", {}), rundir.identity(self.cfg), path)
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(state["G_ema"] if state["G_ema"] is not None else state["G"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
            for s, s_state in zip(self.schedulers, state["schedulers"]):
                s.load_state_dict(s_state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise GanbenchError(f"checkpoint {path} does not fit this run's models or optimizers "
                                f"({str(e).splitlines()[0][:160]}).") from None
        self.z_fixed = state["z_fixed"].to(self.device)
        self.step = int(state["step"])
        self.history = json.loads(state.get("history", "[]"))
        torch.set_rng_state(state["rng"]["cpu"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        note = self.world.restore_rng(state.get("rng_ranks"), rundir.step_seed(self.cfg.seed, self.step))
        if note:
            log.info(note)


def lr_schedulers(cfg: DictConfig, *optimizers: torch.optim.Optimizer) -> list:
    """One lr multiplier per generator step, the product of a warm-up and a decay (no schedulers when both are off).

    - ``optim.warmup=W`` (0: off): the lr rises linearly over the first W steps, 1/W, 2/W, ..., 1 × its base value.
    - ``optim.decay=linear``: the lr falls linearly from its base value at step 0 to ``optim.decay_to`` times it at
      the last step (0: to zero); ``none``: no decay.
    """
    warmup = int(cfg.optim.get("warmup", 0))
    linear = cfg.optim.decay == "linear"
    if not linear and warmup == 0:
        return []
    end = float(cfg.optim.get("decay_to", 0.0)) if linear else 1.0

    def factor(i: int) -> float:
        rise = min(1.0, (i + 1) / warmup) if warmup else 1.0
        return rise * max(end, 1.0 - (1.0 - end) * i / cfg.steps)

    return [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in optimizers]


def critic_steps(cfg: DictConfig, step: int) -> int:
    """D updates before G step ``step`` (0-based): ``n_dis``, or ``critic_schedule.burst`` at the first
    ``critic_schedule.first`` G steps and at every ``critic_schedule.every``-th one.

    The WGAN code (Arjovsky et al. 2017, martinarjovsky/WassersteinGAN ``main.py``) runs bursts of 100 for the first
    25 G steps and every 500th, so that its clipped critic is near its optimum before G moves and again at intervals.
    """
    s = cfg.critic_schedule
    if s.burst and (step < s.first or (s.every and step % s.every == 0)):
        return s.burst
    return cfg.n_dis


def build(cfg: DictConfig, device: torch.device) -> Run:
    """Instantiate dataset, models, loss, constraint and optimizers from the config (seeded)."""
    torch.manual_seed(cfg.seed)
    dataset = make(cfg.dataset, "dataset").to(device)
    if cfg.batch_size > len(dataset):
        raise GanbenchError(f"batch_size={cfg.batch_size} is larger than the dataset ({len(dataset)} images); "
                            f"lower batch_size.")
    G = make(cfg.model.generator, "generator", out_shape=tuple(dataset.shape)).to(device)
    constraint = make(cfg.constraint, "constraint")
    D = constraint.prepare(make(cfg.model.discriminator, "discriminator", in_shape=tuple(dataset.shape))).to(device)
    loss = make(cfg.loss, "loss")
    opt_g = make(cfg.optim.g, "G optimizer")(G.parameters())
    opt_d = make(cfg.optim.d, "D optimizer")(D.parameters())
    schedulers = lr_schedulers(cfg, opt_g, opt_d)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    # The fixed z of the sample grid comes from its own generator: it never shifts the training RNG stream.
    z_fixed = G.sample_z(64, device=device, generator=torch.Generator(device).manual_seed(cfg.seed + 1))
    world = distributed.current()
    world.average_gradients(opt_g, opt_d)  # under torchrun: step() averages the gradients over the ranks first
    world.seed_stream(cfg.seed)  # identical models on every rank; from here on each rank draws its own data
    noise = (InstanceNoise(cfg.instance_noise.std, cfg.instance_noise.until, cfg.steps, device)
             if cfg.instance_noise.std > 0 else None)
    return Run(cfg, device, dataset, G, D, G_ema, loss, constraint, opt_g, opt_d, schedulers, z_fixed, noise=noise)
