"""The CUDA fast path: the whole training iteration (n_dis D steps, the G step, EMA) replayed as one CUDA graph.

Why: at these model sizes a GAN iteration is bound by the host (Python and about a thousand kernel launches), not by
the GPU, which idles. A CUDA graph launches the iteration's recorded kernels in one call.

What makes the iteration capturable, decided once in :func:`make_iteration`:

- No inputs to copy. The real batches and the latents are drawn inside the graph: the dataset is resident on the GPU
  and ``torch.randint`` / ``randn`` / ``rand`` use the default CUDA generator, whose philox offset a replay advances
  exactly as the eager kernels would. A replay therefore draws the same random numbers as an eager iteration.
- Capturable optimizers: ``capturable=True`` keeps Adam's / RMSprop's step counters on the GPU. With an LR schedule,
  each param group's lr becomes a 0-dim GPU tensor. The scheduler steps on the host after each replay and writes
  that tensor in place. Checkpoints keep the eager format (a state_dict hook), so fast and eager runs resume each
  other's checkpoints.
- Warm-up, then capture: the first :data:`WARMUP` calls run eagerly on a side stream (lazy optimizer state,
  cuBLAS/cuDNN handles, autograd's streams). The next call captures the iteration with the schedulers held back,
  then replays it. Every later call replays. Spectral norm's power iteration (in-place buffer updates), BatchNorm
  statistics, the double backward of GP/R1/GN/GraN, clipping and the EMA are ordinary kernels in the graph.
- Anything that cannot be captured (a host sync, an optimizer without a capturable mode, ...) means a clean eager
  fallback and one log line that names the cause.

bf16 autocast (``precision=bf16``) and ``channels_last`` apply on CUDA with or without the graph.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from omegaconf import DictConfig
from torch import Tensor

from ganbench.errors import GanbenchError
from ganbench.step import Parts

Iteration = Callable[[], tuple[Parts, Parts]]

# Eager iterations before the capture. They are real training iterations: their results go to the loop.
WARMUP = 3


def make_iteration(r, eager: Iteration, cfg: DictConfig, log: logging.Logger) -> Iteration:
    """The training iteration the loop calls: ``eager`` itself on the CPU, else ``eager`` made fast for CUDA.

    ``r`` is the run (:class:`ganbench.build.Run`), after any resume. ``eager()`` does one whole iteration and
    returns the last D step's and the G step's :class:`Parts`. It must do the same device work on every call:
    host-side per-call decisions other than the LR schedulers (``r.schedulers``, stepped outside the graph) would
    be frozen into the graph. On CUDA, ``cfg.channels_last`` converts G, D and the EMA copy, ``cfg.precision=bf16``
    runs the iteration under bf16 autocast, and ``cfg.fast`` captures it (see the module docstring).

    The graphed iteration returns **static tensors that the next call overwrites**: use or add them into
    something else before calling again. Optimizer state must not be reloaded after the capture.
    """
    if r.device.type != "cuda":
        return eager
    if cfg.channels_last:
        to_channels_last(r)
    iteration = bf16_autocast(eager) if cfg.precision == "bf16" else eager
    if not cfg.fast:
        return iteration
    why = not_capturable(r)
    if why:
        log.info(f"fast path: the training iteration runs eagerly, not as a CUDA graph: {why}")
        return iteration
    prepare(r)
    return GraphedIteration(iteration, r, log)


def describe(iteration: Iteration) -> str:
    """What the fast path is doing with ``iteration``, in words (for `ganbench bench`)."""
    return getattr(iteration, "status", "eager")


def not_capturable(r) -> str | None:
    """Why the iteration of run ``r`` cannot be captured, as a clause; None when it can be tried."""
    for name, opt in (("G", r.opt_g), ("D", r.opt_d)):
        if "capturable" not in opt.defaults:
            return f"the {name} optimizer ({type(opt).__name__}) has no capturable mode"
    if r.dataset.device.type != r.device.type:  # (cuda vs cuda:0 is the same place)
        return f"the dataset is on {r.dataset.device}, not on {r.device}"
    schedule = r.cfg.get("critic_schedule")
    if schedule is not None and schedule.get("burst"):  # one graph replays one fixed number of D steps
        return "critic_schedule varies the number of D steps per iteration"
    return None


def prepare(r) -> None:
    """Make ``r``'s optimizers graph-safe in place: capturable; lr as a device tensor when a scheduler changes it."""
    for opt in (r.opt_g, r.opt_d):
        make_capturable(opt, tensor_lr=bool(r.schedulers))


def make_capturable(opt: torch.optim.Optimizer, tensor_lr: bool) -> None:
    """``capturable=True``, step counters on the parameters' device, and (``tensor_lr``) lr as a 0-dim tensor there.

    ``opt.state_dict()`` keeps the eager format (lr a float, steps on the CPU, the original ``capturable``), so a
    checkpoint of a fast run loads into an eager run and back.
    """
    original = [group.get("capturable", False) for group in opt.param_groups]
    for group in opt.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        if tensor_lr and not isinstance(group["lr"], Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        for p in group["params"]:
            state = opt.state.get(p, {})
            if isinstance(state.get("step"), Tensor):
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)

    def eager_format(_opt, state_dict: dict) -> dict:
        for group, capturable in zip(state_dict["param_groups"], original):
            group["capturable"] = capturable
            if isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])  # note: a GPU sync, taken only when a checkpoint is written
        # The inner dicts are the optimizer's live state: copy them rather than edit them.
        state_dict["state"] = {
            k: {**s, "step": s["step"].detach().to("cpu", torch.float32)} if isinstance(s.get("step"), Tensor) else s
            for k, s in state_dict["state"].items()}
        return state_dict

    opt.register_state_dict_post_hook(eager_format)


def sync_lr(opt: torch.optim.Optimizer, lr_tensors: list[Tensor | None]) -> None:
    """Keep each group's lr tensor as the one the graph reads, whatever a scheduler wrote into ``group["lr"]``.

    torch's schedulers fill a tensor lr in place, so this is normally a no-op; a scheduler that assigns a float
    would otherwise leave the graph on the old value.
    """
    for group, t in zip(opt.param_groups, lr_tensors):
        if t is not None and group["lr"] is not t:
            t.fill_(float(group["lr"]))
            group["lr"] = t


@contextmanager
def held_back(schedulers: list) -> Iterator[None]:
    """Make every scheduler's ``step()`` a no-op inside the block (it runs on the host, after each replay)."""
    saved = [s.__dict__.get("step") for s in schedulers]
    for s in schedulers:
        s.step = _no_step
    try:
        yield
    finally:
        for s, old in zip(schedulers, saved):
            if old is None:
                del s.step
            else:
                s.step = old


def _no_step(*args, **kwargs) -> None:
    pass


def step_schedulers(r, lr_tensors: dict) -> None:
    """The host side of a replayed iteration: step the LR schedulers, whose new lr the next replay reads."""
    for s in r.schedulers:
        s.step()
    for opt, tensors in lr_tensors.items():
        sync_lr(opt, tensors)


def bf16_autocast(iteration: Iteration) -> Iteration:
    """``iteration`` under CUDA bf16 autocast; parameters, gradients and optimizer state stay fp32.

    The autocast weight cache is off: a cast cached in one iteration must not be reused by a graph replay after the
    optimizer has changed the weight.
    """
    def autocast_iteration() -> tuple[Parts, Parts]:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            return iteration()
    return autocast_iteration


def to_channels_last(r) -> None:
    """G, D and the EMA copy (and any optimizer state already there) in channels_last memory format, in place."""
    for module in (r.G, r.D, r.G_ema):
        if module is not None:
            module.to(memory_format=torch.channels_last)
    for opt in (r.opt_g, r.opt_d):
        for p, state in opt.state.items():
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() == 4 and value.shape == p.shape:
                    state[key] = value.contiguous(memory_format=torch.channels_last)


class GraphedIteration:
    """``iteration()`` run eagerly for :data:`WARMUP` calls, then captured once and replayed on every later call.

    Returns static tensors: each replay overwrites the previous call's :class:`Parts`. ``status`` says what it is
    doing (for `ganbench bench`); a failed capture leaves it eager for good, with one log line.
    """

    def __init__(self, iteration: Iteration, r, log: logging.Logger, warmup: int = WARMUP):
        self.iteration, self.r, self.log, self.warmup = iteration, r, log, warmup
        self.lr_tensors = {opt: [g["lr"] if isinstance(g["lr"], Tensor) else None for g in opt.param_groups]
                           for opt in (r.opt_g, r.opt_d)}
        self.stream = torch.cuda.Stream(device=r.device)  # one stream for warm-up and capture (cached handles)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[Parts, Parts] | None = None
        self.calls = 0
        self.eager = False
        self.status = f"CUDA graph pending ({warmup} eager warm-up iterations first)"

    def __call__(self) -> tuple[Parts, Parts]:
        if self.graph is not None:
            self.graph.replay()
            step_schedulers(self.r, self.lr_tensors)
            return self.out
        if self.eager:
            return self.iteration()
        self.calls += 1
        if self.calls <= self.warmup:
            return self._side_stream()
        return self._capture()

    def _side_stream(self) -> tuple[Parts, Parts]:
        current = torch.cuda.current_stream(self.r.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self.iteration()
        current.wait_stream(self.stream)
        return out

    def _capture(self) -> tuple[Parts, Parts]:
        graph = torch.cuda.CUDAGraph()
        epochs = [s.last_epoch for s in self.r.schedulers]
        generator = torch.cuda.default_generators[self.r.device.index if self.r.device.index is not None
                                                  else torch.cuda.current_device()]
        # A failed capture can leave the generator in capture mode (every later random op raises): restored from this.
        rng = generator.clone_state() if hasattr(generator, "clone_state") else None
        try:
            with held_back(self.r.schedulers), torch.cuda.graph(graph, stream=self.stream):
                out = self.iteration()
            if [s.last_epoch for s in self.r.schedulers] != epochs:
                raise RuntimeError("an LR scheduler stepped inside the captured iteration")
        except Exception as e:  # nothing ran during the capture: the model and optimizer state are untouched
            del graph
            if rng is None:
                raise GanbenchError(f"the training iteration could not be captured as a CUDA graph ({e}) and this "
                                    "torch cannot restore its random generator afterwards; "
                                    "rerun with fast=false.") from e
            generator.graphsafe_set_state(rng)
            torch.cuda.synchronize(self.r.device)  # a sticky CUDA error surfaces here rather than later
            self._fall_back(e)
            return self.iteration()
        graph.replay()
        step_schedulers(self.r, self.lr_tensors)
        self.graph, self.out = graph, out
        self.status = f"CUDA graph (whole iteration, captured after {self.warmup} eager warm-up iterations)"
        self.log.info(f"fast path: the training iteration runs as one CUDA graph (captured after {self.warmup} "
                      f"eager iterations)")
        return out

    def _fall_back(self, e: Exception) -> None:
        """Eager from now on, with one log line naming the first error (a failed capture raises a second one)."""
        while e.__context__ is not None and e.__context__ is not e:
            e = e.__context__
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = f"{type(e).__name__}: {lines[0][:240] if lines else 'no message'}"
        self.eager, self.status = True, f"eager fallback (capture failed: {why})"
        self.log.info(f"fast path: the training iteration could not be captured as a CUDA graph and runs eagerly "
                      f"from now on ({why})")
