"""`ganbench bench [--warmup N] [--iters N] [overrides]`: ganbench's training iteration against a plain PyTorch loop.

    ganbench bench loss=hinge constraint=sn model=sngan_cnn batch_size=64 n_dis=5

The config is composed as for `ganbench train`, and both loops run in one process on its device. They share the G
and D architectures, the batch sizes, n_dis, the optimizer, the LR schedule and the EMA, and the data stay resident
on the device. Their setup differs as follows:

- ganbench: the iteration `ganbench train` runs (:func:`ganbench.train.train_iteration`, through
  :func:`ganbench.fastpath.make_iteration`: a CUDA graph when ``fast=true`` on CUDA). Its parts are added into
  device-side running sums every step, as the loop keeps them.
- reference: the kind of loop the published repos write. Eager modules, torch's ``spectral_norm``, the penalty
  and the gradient normalisation written inline, and D's gradients left on in the G step. Each step calls
  ``.item()`` on its loss for the progress print (a host sync). It covers losses sgan, hinge, wgan and wgan_gp with
  constraints none, sn, gp and gn. For other pairs ganbench is timed alone.

With ``instance_noise.std`` > 0 both loops add N(0, σ²) noise to D's real and fake inputs at σ = ``std`` throughout
(the bench times iterations, not the schedule that anneals σ in a run).

Each loop gets ``--warmup`` untimed iterations, then ``--iters`` timed ones, bracketed by device syncs. Printed:
G-steps/s, D images/s (real + fake images through D in the D steps: G-steps/s × n_dis × 2 × batch_size), peak
memory (CUDA: the most allocated at once, building and warm-up included; the CPU has none per loop to report),
and the ratio ganbench / reference.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from ganbench import config, fastpath
from ganbench.build import build, lr_schedulers, make, resolve_device
from ganbench.constraints import GradientPenalty
from ganbench.errors import GanbenchError
from ganbench.train import train_iteration

log = logging.getLogger("ganbench")

# Default warm-up / timed iterations per loop: quick on the CPU, enough on CUDA to capture the graph before timing.
DEFAULTS = {"cpu": (1, 3), "cuda": (fastpath.WARMUP + 7, 100)}
# The pairs the reference loop implements, by the classes the config names.
REF_LOSSES = {"ganbench.losses.SGAN": "sgan", "ganbench.losses.Hinge": "hinge", "ganbench.losses.WGAN": "wgan",
              "ganbench.losses.WGANGP": "wgan_gp"}
REF_CONSTRAINTS = {"ganbench.constraints.NoConstraint": "none", "ganbench.constraints.SpectralNorm": "sn",
                   "ganbench.constraints.GradientPenaltyConstraint": "gp", "ganbench.constraints.GradNorm": "gn"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one sentence through the CLI, not argparse's usage dump
        raise GanbenchError(f"bench: {message}; see `ganbench bench --help`.")


def main(argv: list[str]) -> int:
    if argv[:1] == [LOAD_COPY]:  # the second copy of --under-load: iterate until killed
        return spin_copy(argv[1:])
    job = parse(argv)
    cfg, device, warmup, iters = job.cfg, job.device, job.warmup, job.iters
    if job.under_load:
        return under_load(cfg, device, warmup, iters, job.overrides, reference=job.reference)
    graphed = device.type == "cuda" and cfg.fast
    our_warmup = max(warmup, fastpath.WARMUP + 1) if graphed else warmup  # never time the capture itself
    ref = reference_kind(cfg)
    print_header(cfg, device)
    print(f"warm-up {our_warmup}{'' if our_warmup == warmup else f' (ganbench; reference {warmup})'}, "
          f"timed {iters} iterations per loop; D images/s = G-steps/s × n_dis × 2 × batch_size")
    status: list[str] = []
    ours = measure(partial(ganbench_loop, cfg, device, status), our_warmup, iters, device)
    print(f"ganbench   {_line(ours, cfg)}   [{status[0]}]")
    if ref is None:
        print(f"reference  none for loss {_short(cfg.loss)} with constraint {_short(cfg.constraint)} (it covers "
              f"losses {', '.join(REF_LOSSES.values())} × constraints {', '.join(REF_CONSTRAINTS.values())}); "
              f"no ratio")
        return 0
    theirs = measure(partial(ReferenceLoop, cfg, device, *ref), warmup, iters, device)
    print(f"reference  {_line(theirs, cfg)}   [eager, .item() per step]")
    memory = (f"{ours[1] / theirs[1]:.2f}x peak memory" if device.type == "cuda"
              else "peak memory n/a on the CPU")
    print(f"ratio ganbench/reference: {ours[0] / theirs[0]:.2f}x G-steps/s, {memory}")
    return 0


class Job(NamedTuple):
    """What one `ganbench bench` command asks for."""

    cfg: DictConfig
    device: torch.device
    warmup: int  # untimed iterations per loop
    iters: int  # timed iterations per loop
    under_load: bool
    reference: bool  # --under-load: also the cases under OpenMP's default wait
    overrides: list[str]  # the KEY=VALUE overrides, as given


def parse(argv: list[str]) -> Job:
    """The command line as a :class:`Job`; bad input is one sentence."""
    parser = _Parser(prog="ganbench bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed iterations per loop (default {DEFAULTS['cpu'][0]} on the CPU, "
                             f"{DEFAULTS['cuda'][0]} on CUDA)")
    parser.add_argument("--iters", type=int, default=None,
                        help=f"timed iterations per loop (default {DEFAULTS['cpu'][1]} on the CPU, "
                             f"{DEFAULTS['cuda'][1]} on CUDA)")
    parser.add_argument("--under-load", action="store_true",
                        help="CPU: time ganbench's iteration alone, beside a busy single-thread process and beside a "
                             "second copy of itself (--iters × 20 iterations per case), then the same cases under "
                             "OpenMP's default wait; print each rate, its ratio to the rate alone and to the reference")
    parser.add_argument("--no-reference", action="store_true",
                        help="with --under-load: leave out the same cases under OpenMP's default wait")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for `ganbench train`")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if o.startswith("-") or "=" not in o]
    if bad:
        raise GanbenchError(f"bench: '{bad[0]}' is neither an option nor a KEY=VALUE override; "
                            f"see `ganbench bench --help`.")
    if any(o.startswith(("hydra.", "resume=")) for o in args.overrides):
        raise GanbenchError("bench: hydra.* and resume= overrides make no sense for a benchmark; leave them out.")
    cfg = config.compose(args.overrides)
    config.validate(cfg)
    if args.under_load and (cfg.device != "cpu" and (cfg.device != "auto" or torch.cuda.is_available())):
        raise GanbenchError("bench: --under-load measures how CPU threads share the cores; add device=cpu.")
    device = resolve_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    warmup, iters = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    warmup = warmup if args.warmup is None else args.warmup
    iters = iters if args.iters is None else args.iters
    if warmup < 0 or iters < 1:
        raise GanbenchError(f"bench: --warmup must be >= 0 and --iters >= 1, got {warmup} and {iters}.")
    return Job(cfg, device, warmup, iters, args.under_load, not args.no_reference, list(args.overrides))


# The first argument of the second copy that --under-load starts (not a user option).
LOAD_COPY = "--load-copy"


def under_load(cfg: DictConfig, device: torch.device, warmup: int, iters: int, overrides: list[str],
               reference: bool = True) -> int:
    """ganbench's iteration alone, beside a busy single-thread process, and beside a second copy of itself.

    The busy process is a pure-Python loop (one core, as a notebook, TensorBoard's indexer or a data script takes);
    the second copy is another process running this same iteration with the same settings, as two runs started
    side by side. Each case times ``iters × 20`` iterations after ``warmup``; the other process starts first and is
    iterating before the timing starts. With ``reference``, the same cases then run in a child process with
    OpenMP's default wait (``GOMP_SPINCOUNT=300000``, libgomp's default), and the rates are compared case by case.
    """
    print_header(cfg, device)
    n = iters * 20
    print(f"warm-up {warmup}, timed {n} iterations per case; OpenMP wait: {_wait_policy()}; "
          f"ratio = rate in the case / rate alone")
    ours = _load_cases(cfg, device, warmup, n, overrides)
    if not reference:
        return 0
    env = {**os.environ, "GOMP_SPINCOUNT": OPENMP_DEFAULT_SPIN}
    env.pop("OMP_WAIT_POLICY", None)
    child = subprocess.run([sys.executable, "-m", "ganbench", "bench", "--under-load", "--no-reference",
                            f"--iters={iters}", f"--warmup={warmup}", *overrides],
                           env=env, capture_output=True, text=True)
    theirs = _rates(child.stdout)
    if child.returncode != 0 or len(theirs) != len(ours):
        raise GanbenchError(f"bench: the reference run with OpenMP's default wait failed: "
                            f"{(child.stderr.strip().splitlines() or ['no message'])[-1]}")
    print(f"reference: the same cases with OpenMP's default wait (GOMP_SPINCOUNT={OPENMP_DEFAULT_SPIN})")
    for label, rate in theirs.items():
        print(f"  {label:<31}{rate:8.2f} G-steps/s   ratio {rate / theirs['alone']:.2f}")
    print("ganbench / reference: " + ", ".join(f"{label} {ours[label] / theirs[label]:.2f}x" for label in ours))
    return 0


# libgomp's own GOMP_SPINCOUNT when neither it nor OMP_WAIT_POLICY is set: the reference of --under-load.
OPENMP_DEFAULT_SPIN = "300000"
LOAD_CASES = ("alone", "beside a busy 1-thread process", "beside a second copy of itself")


def _load_cases(cfg: DictConfig, device: torch.device, warmup: int, n: int, overrides: list[str]) -> dict:
    """{case: G-steps/s} for :data:`LOAD_CASES`, each printed as it is measured."""
    rates = {"alone": measure(partial(ganbench_loop, cfg, device, []), warmup, n, device)[0]}
    print(f"{'alone':<31}{rates['alone']:8.2f} G-steps/s")
    others = [[sys.executable, "-c", "print('ready', flush=True)\nwhile True: pass"],
              [sys.executable, "-m", "ganbench", "bench", LOAD_COPY, *overrides]]
    for label, command in zip(LOAD_CASES[1:], others):
        other = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            if other.stdout.readline().strip() != "ready":
                raise GanbenchError(f"bench: the process to run beside ({' '.join(command[:4])} ...) did not start.")
            rates[label] = measure(partial(ganbench_loop, cfg, device, []), warmup, n, device)[0]
        finally:
            other.kill()
            other.wait()
        print(f"{label:<31}{rates[label]:8.2f} G-steps/s   ratio {rates[label] / rates['alone']:.2f}")
    return rates


def _rates(text: str) -> dict:
    """The {case: G-steps/s} that :func:`_load_cases` printed in ``text``."""
    rates = {}
    for line in map(str.strip, text.splitlines()):
        for label in LOAD_CASES:
            if line.startswith(label) and "G-steps/s" in line:
                rates[label] = float(line[len(label):].split()[0])
    return rates


def spin_copy(argv: list[str]) -> int:
    """The second copy of :func:`under_load`: build the same iteration, say 'ready' once it has run, then iterate."""
    job = parse(argv)
    step = ganbench_loop(job.cfg, job.device, [])
    step()
    print("ready", flush=True)
    while True:
        step()


def _wait_policy() -> str:
    policy = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
              if k in os.environ]
    return ", ".join(policy) or "OpenMP's default"


def print_header(cfg: DictConfig, device: torch.device) -> None:
    """What is measured, on what: enough to put the numbers in a table without the command line."""
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} thread{'s' * (threads > 1)}"
    print(f"ganbench bench on {device} ({name}), torch {torch.__version__}: model {_short(cfg.model.generator)}/"
          f"{_short(cfg.model.discriminator)}, dataset {cfg.dataset._target_.rsplit('.', 1)[-1]}, "
          f"loss {_short(cfg.loss)}, constraint {_short(cfg.constraint)}, optim {_short(cfg.optim.d)}, "
          f"batch {cfg.batch_size} (G {cfg.g_batch_size or cfg.batch_size}), n_dis {cfg.n_dis}, "
          f"precision {cfg.precision}, channels_last {str(cfg.channels_last).lower()}, "
          f"fast {str(cfg.fast).lower()}"
          + (f", instance noise σ {cfg.instance_noise.std:g} (held)" if cfg.instance_noise.std > 0 else ""))


def _short(node: DictConfig) -> str:
    return str(node._target_).rsplit(".", 1)[-1]


def _line(result: tuple[float, float], cfg: DictConfig) -> str:
    rate, peak = result
    images = rate * cfg.n_dis * 2 * cfg.batch_size
    memory = "peak n/a" if math.isnan(peak) else f"peak {peak:9.1f} MiB"
    return f"{rate:9.2f} G-steps/s  {images:11.0f} D images/s  {memory}"


def measure(make_loop: Callable[[], Callable[[], None]], warmup: int, iters: int,
            device: torch.device) -> tuple[float, float]:
    """(iterations per second, peak MiB allocated on CUDA from the loop's build on, NaN on the CPU)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = make_loop()
    for _ in range(warmup):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    rate = iters / (time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    del step
    gc.collect()
    return rate, peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ganbench_loop(cfg: DictConfig, device: torch.device, status: list[str]) -> Callable[[], None]:
    """ganbench's iteration as `ganbench train` builds it, plus the loop's device-side running sums."""
    r = build(cfg, device)
    Dw = r.constraint.wrap(r.D)
    penalties = r.constraint.run_penalties(r.loss)
    iteration = fastpath.make_iteration(r, partial(train_iteration, r, Dw, penalties), cfg, log)
    sums: dict[str, torch.Tensor] = {}

    def step() -> None:
        d, g = iteration()
        for k, v in (("loss/d", d.total), ("loss/g", g.total), *d.parts.items(), *g.parts.items()):
            sums[k] = sums[k] + v if k in sums else v.clone()
        status[:] = [_describe(cfg, device, iteration)]
    return step


def _describe(cfg: DictConfig, device: torch.device, iteration) -> str:
    if device.type != "cuda":
        return "eager: the fast path is CUDA only"
    if not cfg.fast:
        return "eager: fast=false"
    return fastpath.describe(iteration)


def reference_kind(cfg: DictConfig) -> tuple[str, str] | None:
    """(loss, constraint) as the reference loop names them, or None when it does not implement the pair."""
    loss = REF_LOSSES.get(cfg.loss._target_)
    constraint = REF_CONSTRAINTS.get(cfg.constraint._target_)
    if loss is None or constraint is None or cfg.loss.get("saturating", False):
        return None
    return loss, constraint


class ReferenceLoop:
    """A plain eager GAN loop as published repos write it (written out here, independent of ganbench's step).

    Calling it runs one iteration: n_dis D steps, one G step, the LR schedule and the EMA.
    """

    def __init__(self, cfg: DictConfig, device: torch.device, loss: str, constraint: str):
        self.cfg, self.device, self.loss, self.constraint = cfg, device, loss, constraint
        torch.manual_seed(cfg.seed)
        self.dataset = make(cfg.dataset, "dataset").to(device)
        shape = tuple(self.dataset.shape)
        self.G = make(cfg.model.generator, "generator", out_shape=shape).to(device)
        D = make(cfg.model.discriminator, "discriminator", in_shape=shape)
        if constraint == "sn":
            for m in list(D.modules()):
                if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                    nn.utils.parametrizations.spectral_norm(m, n_power_iterations=cfg.constraint.n_power_iterations)
        self.D = D.to(device)
        self.opt_g = make(cfg.optim.g, "G optimizer")(self.G.parameters())
        self.opt_d = make(cfg.optim.d, "D optimizer")(self.D.parameters())
        self.schedulers = lr_schedulers(cfg, self.opt_g, self.opt_d)
        self.G_ema = None
        if cfg.ema_decay > 0:
            self.G_ema = make(cfg.model.generator, "generator", out_shape=shape).to(device).requires_grad_(False)
            self.G_ema.load_state_dict(self.G.state_dict())
        self.noise_std = float(cfg.instance_noise.std)
        runs = make(cfg.constraint, "constraint").run_penalties(make(cfg.loss, "loss"))  # ganbench's rule, asked
        self.gp = [(p.weight, p.one_sided) for p in runs if isinstance(p, GradientPenalty)]

    def noised(self, x: torch.Tensor) -> torch.Tensor:
        """x + σε, as a repo with instance noise writes it (σ held at instance_noise.std); x itself without."""
        return x + self.noise_std * torch.randn_like(x) if self.noise_std > 0 else x

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        if self.constraint != "gn":
            return self.D(x)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        f = self.D(x)
        grad = torch.autograd.grad(f.sum(), x, create_graph=True)[0].flatten(1).norm(dim=1)
        return f / (grad.view_as(f) + f.abs())

    def d_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d_real, d_fake = self.critic(real), self.critic(fake)
        if self.loss == "sgan":
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.loss == "hinge":
            loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        else:
            loss = d_fake.mean() - d_real.mean()
        for weight, one_sided in self.gp:
            eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=self.device)
            x = (eps * real + (1 - eps) * fake).requires_grad_(True)
            # on the raw D, as repos write it
            grad = torch.autograd.grad(self.D(x).sum(), x, create_graph=True)[0].flatten(1).norm(dim=1)
            gap = (grad - 1).clamp_min(0) if one_sided else grad - 1
            loss = loss + weight * gap.square().mean()
        return loss

    def __call__(self) -> None:
        cfg, G, n = self.cfg, self.G, self.cfg.batch_size
        for _ in range(cfg.n_dis):
            real = self.noised(self.dataset.sample(n))
            with torch.no_grad():
                fake = self.noised(G(torch.randn(n, G.z_dim, device=self.device)))
            loss_d = self.d_loss(real, fake)
            self.opt_d.zero_grad()
            loss_d.backward()
            self.opt_d.step()
            loss_d.item()  # the per-step progress print of most repos: a host sync
        d_fake = self.critic(self.noised(G(torch.randn(cfg.g_batch_size or n, G.z_dim, device=self.device))))
        loss_g = F.softplus(-d_fake).mean() if self.loss == "sgan" else -d_fake.mean()
        self.opt_g.zero_grad()
        loss_g.backward()  # D's gradients are computed too, as in most repos (cleared by the next D step)
        self.opt_g.step()
        for s in self.schedulers:
            s.step()
        if self.G_ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(self.G_ema.parameters(), G.parameters()):
                    p_ema.mul_(cfg.ema_decay).add_(p, alpha=1 - cfg.ema_decay)
                for b_ema, b in zip(self.G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)
        loss_g.item()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
