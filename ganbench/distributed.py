"""One run on several processes: torchrun's process group, each rank's share of the work, what the ranks agree on.

``torchrun --nproc_per_node=N -m ganbench train ...`` starts N copies of ganbench; each finds its place in torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`init_from_env` joins
them into one process group (gloo for CPU tensors, nccl for CUDA tensors); :func:`current` is this process's
:class:`World` (a world of one outside torchrun, where every method below is free: no collective, no copy, no sync).

- **Same models, own data.** Every rank builds G and D from the same seed, so they start identical; then ranks > 0
  move to their own RNG stream (:meth:`World.seed_stream`; rank 0 keeps the single-process one), so each rank draws
  its own real batches, latents and penalty noise. ``batch_size`` is the **global** batch: each rank draws
  ``batch_size / N`` (:func:`check_env` refuses a batch that does not divide).
- **Gradients averaged by hand, not by DistributedDataParallel.** :meth:`World.average_gradients` hooks each
  optimizer so that ``step()`` first all-reduces the gradients (one flat buffer per dtype) and divides by N; step.py's
  backward()/step() stay as they are. Why not DDP: its forward hooks take part in collectives (buffer broadcasts;
  ``broadcast_buffers`` for spectral norm's u, v), so the forwards that only rank 0 runs (the Lipschitz estimate,
  sample grids, evaluation) would hang the group; its wrapper renames every state_dict key (``module.``), which
  checkpoints, EMA and ``ganbench eval`` would all have to undo; and its documentation says it does not work with
  ``torch.autograd.grad``, which GP, R1 and GN/GraN use for their double backward (a torch 2.14 probe found the
  averages right anyway, but nothing promises it). StyleGAN2-ADA averages its gradients itself for such reasons.
  The cost: no overlap of the all-reduce with the backward pass (one flat all-reduce per optimizer step).
- **Spectral norm's u, v stay identical without communication**: they start identical (same seed) and the power
  iteration is a deterministic function of the weights, which the identical averaged update keeps bit-identical.
- **Rank 0 writes**: TensorBoard, samples, metrics.json, checkpoints and the console; evaluation runs on rank 0 while
  the others wait for its verdict (:meth:`World.broadcast`). A checkpoint holds every rank's RNG state
  (:meth:`World.gather`), so a resumed job continues each rank's stream (:meth:`World.restore_rng`).
- **Agreement**: a stop signal on any rank stops every rank after the same step (:meth:`World.agree_signal`, a host
  flag over gloo, every step); a non-finite loss on any rank is seen by all at the next duty step
  (:meth:`World.first_bad`), so all stop together with one checkpoint and one message.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections import defaultdict

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import Tensor

from ganbench.errors import GanbenchError
from ganbench.torchrun import env_world_size, launched

# How long a rank waits at a collective for the others (rank 0's evaluation included) before the run fails.
TIMEOUT = datetime.timedelta(minutes=30)


def check_env(cfg: DictConfig) -> None:
    """The one-line refusals of a launch this run cannot use (the config is fine alone; called by config.validate)."""
    if not launched():
        return
    n = env_world_size()
    for key in ("batch_size", "g_batch_size"):
        b = cfg.get(key)
        if b is not None and b % n:
            raise GanbenchError(f"{key}={b} does not split over the {n} processes torchrun started: {key} is the "
                                f"global batch, each process draws {key}/{n}; use a multiple of {n}.")
    if not dist.is_available() or not dist.is_gloo_available():
        raise GanbenchError(f"torchrun started {n} processes but this PyTorch has no gloo backend, which ganbench "
                            f"needs to join them; run one process (plain `ganbench train`) or install a PyTorch "
                            f"build with torch.distributed.")
    if isinstance(cfg.device, str) and cfg.device.startswith("cuda:"):
        raise GanbenchError(f"device={cfg.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                            f"write device=cuda (or auto).")
    if cfg.device in ("cuda", "auto") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
        if local > torch.cuda.device_count():
            raise GanbenchError(f"torchrun started {local} processes on this node but it has "
                                f"{torch.cuda.device_count()} GPU(s); use at most --nproc_per_node="
                                f"{torch.cuda.device_count()}.")
        if not dist.is_nccl_available():
            raise GanbenchError("this PyTorch has no nccl backend for CUDA tensors; use device=cpu under torchrun.")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own RNG stream (rank 0 keeps the stream of a single-process run)."""
    return int.from_bytes(hashlib.sha256(f"ganbench seed {seed} rank {rank}".encode()).digest()[:8], "little") >> 1


class World:
    """This process's place among the run's processes; a world of one (``active`` False) costs nothing."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0, active: bool = False):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.active = active  # in a process group (torchrun), even of one process: the collectives really run
        self.main = rank == 0

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, active={self.active})"

    def seed_stream(self, seed: int) -> None:
        """After the models are built from ``seed`` (identical on every rank): ranks > 0 move to their own stream."""
        if self.rank:
            torch.manual_seed(rank_seed(seed, self.rank))

    def share(self, batch: int) -> int:
        """This rank's part of a global batch."""
        return batch // self.size

    def average_gradients(self, *optimizers: torch.optim.Optimizer) -> None:
        """Make each optimizer's step() first average its gradients over the ranks (see the module docstring)."""
        if self.active:
            for opt in optimizers:
                opt.register_step_pre_hook(self._average)

    def _average(self, opt: torch.optim.Optimizer, args, kwargs) -> None:
        by_dtype: dict[torch.dtype, list[Tensor]] = defaultdict(list)
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_dtype[p.grad.dtype].append(p.grad)
        for grads in by_dtype.values():  # one all-reduce per dtype (usually one in all)
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.size)
            for g, avg in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(avg.view_as(g))

    def agree_signal(self, signum: int | None) -> int | None:
        """The stop signal of any rank (the largest number if several), the same on every rank; a host-side gloo
        all-reduce, so no GPU sync."""
        if not self.active:
            return signum
        flag = torch.tensor([signum or 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None

    def first_bad(self, first_bad: Tensor) -> int:
        """The first step with a non-finite loss on any rank, -1 if none (``first_bad`` is -1 or a step, on device)."""
        if not self.active:
            return int(first_bad)  # note: a GPU sync point, taken only at duty intervals
        none = torch.iinfo(torch.int64).max
        t = torch.where(first_bad < 0, none, first_bad).reshape(1)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        bad = int(t)
        return -1 if bad == none else bad

    def mean(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """The mean over ranks of each value (every rank has the same keys); the dict itself in a world of one."""
        if not self.active or not sums:
            return sums
        stacked = torch.stack([v.float().reshape(()) for v in sums.values()])
        dist.all_reduce(stacked)
        return dict(zip(sums, stacked / self.size))

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (picklable; other ranks pass anything, e.g. None)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` as a list on rank 0 (None on the others); None in a world of one."""
        if not self.active:
            return None
        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def restore_rng(self, rng_ranks: list | None, step_seed: int) -> str | None:
        """After a checkpoint's rank-0 RNG state was restored: this rank's own saved state, if the checkpoint has one
        per rank of this world; else a fresh stream from the step's seed (``rundir.step_seed``) and the rank.
        Returns a note when streams changed."""
        if not self.active or (self.size == 1 and not rng_ranks):
            return None
        if rng_ranks is not None and len(rng_ranks) == self.size:
            torch.set_rng_state(rng_ranks[self.rank]["cpu"])
            if rng_ranks[self.rank]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng_ranks[self.rank]["cuda"])
            return None
        if self.rank:
            torch.manual_seed(rank_seed(step_seed, self.rank))
        saved = len(rng_ranks) if rng_ranks else 1
        return (f"the checkpoint holds the RNG streams of {saved} process(es) and this run has {self.size}: "
                f"ranks > 0 draw new streams from here on (same global batch, another sample order)")


_world = World()


def peer_failure(e: BaseException) -> str | None:
    """The one line for a collective that failed because another rank died or hung; None for any other error."""
    text = str(e)
    if not (isinstance(e, dist.DistError) or isinstance(e, RuntimeError) and
            any(k in text for k in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer"))):
        return None
    first = (text.strip().splitlines() or [type(e).__name__])[0][:200]
    return (f"another process of this torchrun job stopped or stopped answering ({first}); resume the whole job "
            f"with resume=auto and the same hydra.run.dir, or resume=<run dir>.")


def current() -> World:
    """This process's :class:`World` (a world of one unless :func:`init_from_env` joined a torchrun group)."""
    return _world


def init_from_env() -> World:
    """Join the process group torchrun set up (gloo for CPU tensors, plus nccl for CUDA tensors where available)."""
    global _world
    if not launched():
        return _world
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    _world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), active=True)
    return _world


def shutdown() -> None:
    """Leave the process group (at the end of `ganbench train` under torchrun)."""
    global _world
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


class Silent:
    """What ranks > 0 write to TensorBoard and samples/: nothing (the :class:`ganbench.logger.RunLogger` interface)."""

    def scalars(self, *args, **kwargs) -> None:
        pass

    samples = text = hparams = close = scalars
