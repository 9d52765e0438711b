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
  cuBLAS/cuDNN handles, autograd's streams). The next call captures the iteration, with the schedulers held back, into
  a private memory pool. Every later call replays. Spectral norm's power iteration (in-place buffer updates),
  BatchNorm statistics, the double backward of GP/R1/GN/GraN, clipping and the EMA are ordinary kernels in the graph.
- Self-check before the graph is trusted: the capture call also runs the iteration eagerly, puts every parameter,
  buffer, optimizer state and RNG state back as they were, replays the graph, and compares the two resulting states
  tensor by tensor (:func:`compare`). A mismatch falls back to eager with one warning naming the first tensor that
  differs. Cost, once per run: one extra eager iteration, two copies of the state to host memory and the comparison.
- Anything that cannot be captured (a host sync, an optimizer without a capturable mode, ...) means an eager fallback
  with one warning that names the cause. A failed capture is unwound completely (:meth:`GraphedIteration._abandon`):
  the capture ended, the allocator told that no capture is under way, the private pool released, the current stream
  and the random generator restored, so later captures, ``torch.cuda.empty_cache()`` and later runs in the same
  process (a sweep, `ganbench bench`'s reference loop) work.

How a run executed (graph or eager and why, the self-check, precision, device, versions) is :func:`execution`, which
`ganbench train` writes into metrics.json.

bf16 autocast (``precision=bf16``) and ``channels_last`` apply on CUDA with or without the graph.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from ganbench.errors import GanbenchError
from ganbench.step import Parts

Iteration = Callable[[], tuple[Parts, Parts]]

# Eager iterations before the capture. They are real training iterations: their results go to the loop.
WARMUP = 3
# The self-check's tolerance where the graph and the eager iteration may round differently (nondeterministic kernels):
# per tensor, ||graph - eager|| <= SELF_CHECK_RTOL * ||eager - before||, the norm of what one iteration changed. It
# passes the rounding of atomics (about 1e-6 of an update) and catches an lr off by 1 % or more, a dead EMA or stale
# BatchNorm statistics (a difference of the whole update). Where torch.use_deterministic_algorithms(True) is on, the
# check is bit for bit.
SELF_CHECK_RTOL = 1e-2


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
    why = not_capturable(r)
    if why is None:
        prepare(r)
        return GraphedIteration(iteration, r, log, warmup=WARMUP)
    if cfg.fast:
        log.warning(f"fast path: the training iteration runs eagerly, not as a CUDA graph: {why}")
    return iteration


def describe(iteration: Iteration) -> str:
    """What the fast path is doing with ``iteration``, in words (for `ganbench bench`)."""
    return getattr(iteration, "status", "eager")


def not_capturable(r) -> str | None:
    """Why the iteration of run ``r`` runs eagerly rather than as a CUDA graph, as a clause; None when a capture can be
    tried. The one place such reasons live: metrics.json's execution record and the log line quote it."""
    if r.device.type != "cuda":
        return "cpu"
    if r.world.active:
        return "torchrun: the iteration holds collectives"
    if not r.cfg.fast:
        return "fast=false"
    for name, opt in (("G", r.opt_g), ("D", r.opt_d)):
        if "capturable" not in opt.defaults:
            return f"the {name} optimizer ({type(opt).__name__}) has no capturable mode"
    if r.dataset.device.type != r.device.type:  # (cuda vs cuda:0 is the same place)
        return f"the dataset is on {r.dataset.device}, not on {r.device}"
    schedule = r.cfg.get("critic_schedule")
    if schedule is not None and schedule.get("burst"):  # one graph replays one fixed number of D steps
        return "critic_schedule varies the number of D steps per iteration"
    return None


def execution(iteration: Iteration, r, start_step: int) -> dict:
    """How run ``r`` has executed since ``start_step`` (this process's first step): metrics.json's record.

    ``path`` is ``graph`` or ``eager`` with its ``reason``; ``self_check`` is the graph's verdict; ``eager_iterations``
    counts the iterations that ran eagerly, of ``iterations``.
    """
    cuda = r.device.type == "cuda"
    ran = r.step - start_step
    record = {"path": "eager", "reason": not_capturable(r), "self_check": "not run", "iterations": ran,
              "eager_iterations": ran, "precision": r.cfg.precision if cuda else "fp32",
              "channels_last": bool(r.cfg.channels_last) and cuda,
              "device": torch.cuda.get_device_name(r.device) if cuda else "cpu",
              "cpu_threads": torch.get_num_threads(),  # CPU results are repeatable bit for bit with the same count
              "torch": torch.__version__, "cuda": torch.version.cuda}
    if isinstance(iteration, GraphedIteration):
        record.update(iteration.execution())
    return record


def execution_text(record: dict) -> str:
    """The execution record as a markdown table (TensorBoard's text tab)."""
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in record.items())


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


def named_state(r, lr_tensors: dict) -> list[tuple[str, Tensor]]:
    """Every tensor one iteration of run ``r`` may change, by name: G's, D's and the EMA copy's parameters and buffers
    (BatchNorm statistics, spectral norm's u and v), each optimizer's state, the lr tensors and instance noise's σ."""
    out = []
    for prefix, module in (("G", r.G), ("D", r.D), ("G_ema", r.G_ema)):
        if module is not None:
            out += [(f"{prefix}.{n}", t) for n, t in (*module.named_parameters(), *module.named_buffers())]
    for prefix, opt, module in (("opt_g", r.opt_g, r.G), ("opt_d", r.opt_d, r.D)):
        names = {id(p): n for n, p in module.named_parameters()}
        for p, state in opt.state.items():
            out += [(f"{prefix}[{names.get(id(p), '?')}].{k}", v) for k, v in state.items() if isinstance(v, Tensor)]
        out += [(f"{prefix}.lr[{i}]", t) for i, t in enumerate(lr_tensors.get(opt, [])) if t is not None]
    if r.noise is not None:
        out.append(("instance_noise.std", r.noise.std))
    return out


def output_tensors(out: tuple[Parts, Parts]) -> list[tuple[str, Tensor]]:
    """The iteration's results by name: ``loss/d``, ``loss/g`` and each step's named parts."""
    d, g = out
    return [("loss/d", d.total), ("loss/g", g.total), *((f"d {k}", v) for k, v in d.parts.items()),
            *((f"g {k}", v) for k, v in g.parts.items())]


def snapshot(named: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """A copy of each tensor in host memory (the GPU's own memory stays as it is)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in named}


@dataclass
class Check:
    """The self-check's verdict: ``first_bad`` names the first tensor that differs beyond the tolerance (None: passed);
    ``bitwise`` says whether every tensor is bit for bit equal; ``worst`` is the largest update-relative difference."""

    first_bad: str | None
    bitwise: bool
    worst: float
    worst_name: str | None
    exact: bool

    def __str__(self) -> str:
        if self.first_bad is not None:
            rule = "bit for bit" if self.exact else f"tolerance {SELF_CHECK_RTOL:g}"
            return f"failed: {self.first_bad} differs (update-relative difference {self.worst:.3g}; {rule})"
        if self.bitwise:
            return "passed, bit for bit"
        return (f"passed within tolerance {SELF_CHECK_RTOL:g} (largest update-relative difference {self.worst:.3g}, "
                f"{self.worst_name})")


def compare(before: dict[str, Tensor], eager: dict[str, Tensor], graph: dict[str, Tensor], exact: bool) -> Check:
    """The graph's state against the eager iteration's, both from ``before``.

    Integer tensors (step counts, BatchNorm's batch count, RNG states) and tensors the eager iteration left unchanged
    must match bit for bit. A floating tensor that changed must match to :data:`SELF_CHECK_RTOL` of its change
    (its update-relative difference ``||graph - eager|| / ||eager - before||``), or bit for bit when ``exact``.
    """
    first_bad, bitwise, worst, worst_name = None, True, 0.0, None
    for name, e in eager.items():
        g = graph[name]
        if g.shape != e.shape or g.dtype != e.dtype:
            rel = math.inf
        elif torch.equal(g, e):
            continue
        elif not (e.is_floating_point() or e.is_complex()):
            rel = math.inf
        else:
            g64, e64 = g.double(), e.double()
            nan = e64.isnan()
            if not torch.equal(nan, g64.isnan()):
                rel = math.inf
            else:
                g64, e64 = g64.masked_fill(nan, 0), e64.masked_fill(nan, 0)
                b = before[name].double().masked_fill(nan, 0) if name in before else torch.zeros_like(e64)
                change = float((e64 - b).norm())
                diff = float((g64 - e64).norm())
                rel = diff / change if change > 0 else math.inf
        bitwise = False
        if rel > worst or worst_name is None:
            worst, worst_name = rel, name
        if first_bad is None and (exact or not rel <= SELF_CHECK_RTOL):
            first_bad = name
            worst, worst_name = rel, name
    return Check(first_bad, bitwise, worst, worst_name, exact)


class GraphedIteration:
    """``iteration()`` run eagerly for :data:`WARMUP` calls, then captured once, self-checked and replayed on every
    later call.

    Returns static tensors: each replay overwrites the previous call's :class:`Parts`. ``status`` says what it is
    doing (for `ganbench bench`), :meth:`execution` how it has run (for metrics.json). A failed capture or self-check
    leaves it eager for good, with one warning. ``self_check=False`` trusts the graph without the check; ``exact``
    (default: whether torch's deterministic algorithms are on) makes the check bit for bit.
    """

    def __init__(self, iteration: Iteration, r, log: logging.Logger, warmup: int = WARMUP, self_check: bool = True,
                 exact: bool | None = None):
        self.iteration, self.r, self.log, self.warmup = iteration, r, log, warmup
        self.self_check = self_check
        self.exact = torch.are_deterministic_algorithms_enabled() if exact is None else exact
        self.lr_tensors = {opt: [g["lr"] if isinstance(g["lr"], Tensor) else None for g in opt.param_groups]
                           for opt in (r.opt_g, r.opt_d)}
        self.index = r.device.index if r.device.index is not None else torch.cuda.current_device()
        self.stream = torch.cuda.Stream(device=r.device)  # one stream for warm-up and capture (cached handles)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.pool = None  # the graph's private memory pool (a torch.cuda.MemPool), held as long as the graph
        self.out: tuple[Parts, Parts] | None = None
        self.calls = 0
        self.eager = False
        self.eager_calls = 0
        self.reason: str | None = f"not captured yet: the capture follows {warmup} eager warm-up iterations"
        self.check = "not run"
        self.status = f"CUDA graph pending ({warmup} eager warm-up iterations first)"

    def __call__(self) -> tuple[Parts, Parts]:
        if self.graph is not None:
            self.graph.replay()
            step_schedulers(self.r, self.lr_tensors)
            return self.out
        if self.eager:
            self.eager_calls += 1
            return self.iteration()
        self.calls += 1
        if self.calls <= self.warmup:
            self.eager_calls += 1
            return self._side_stream()
        return self._capture()  # its result comes from the graph, or from an eager iteration if it falls back

    def execution(self) -> dict:
        """The part of metrics.json's execution record this object knows: path, reason, self-check, eager count."""
        return {"path": "graph" if self.graph is not None else "eager", "reason": self.reason,
                "self_check": self.check, "eager_iterations": self.eager_calls}

    def _side_stream(self) -> tuple[Parts, Parts]:
        current = torch.cuda.current_stream(self.r.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self.iteration()
        current.wait_stream(self.stream)
        return out

    def _capture(self) -> tuple[Parts, Parts]:
        r = self.r
        generator = torch.cuda.default_generators[self.index]
        named = named_state(r, self.lr_tensors)
        before = self._state(named, generator) if self.self_check else {}
        epochs = [s.last_epoch for s in r.schedulers]
        # A failed capture can leave the generator in capture mode (every later random op raises): restored from this.
        rng = generator.clone_state() if hasattr(generator, "clone_state") else None
        graph, pool = torch.cuda.CUDAGraph(), new_pool()
        why = None
        try:
            with held_back(r.schedulers):
                out = self._record(graph, pool)
            if [s.last_epoch for s in r.schedulers] != epochs:
                raise RuntimeError("an LR scheduler stepped inside the captured iteration")
        except Exception as e:  # nothing ran during the capture: the model and optimizer state are untouched
            why = first_line(e)
            if rng is None:
                self._abandon(graph, pool, generator, None)
                raise GanbenchError(f"the training iteration could not be captured as a CUDA graph ({e}) and this "
                                    "torch cannot restore its random generator afterwards; "
                                    "rerun with fast=false.") from e
        if why is not None:  # (outside the except block: its traceback would keep the pool alive)
            self._abandon(graph, pool, generator, rng)
            del graph, pool
            self._fall_back(f"capture failed: {why}{self._settle()}")
            self.eager_calls += 1
            return self.iteration()
        if self.self_check:
            eager_out, check = self._check(graph, out, named, before, generator)
            self.check = str(check)
            if check.first_bad is not None:
                self._abandon(graph, pool, generator, None)
                del graph, pool, out
                self._fall_back(f"self-check {self.check}{self._settle()}")
                self.eager_calls += 1
                step_schedulers(r, self.lr_tensors)  # the eager iteration ran with them held back
                return eager_out
        else:
            graph.replay()
            self.check = "off"
        step_schedulers(r, self.lr_tensors)
        self.graph, self.pool, self.out, self.reason = graph, pool, out, None
        self.status = f"CUDA graph (whole iteration, captured after {self.warmup} eager warm-up iterations)"
        self.log.info(f"fast path: the training iteration runs as one CUDA graph (captured after {self.warmup} "
                      f"eager iterations; self-check {self.check})")
        return out

    def _record(self, graph, pool) -> tuple[Parts, Parts]:
        """Capture one iteration into ``graph``, allocating from ``pool``; the current stream is restored however the
        capture ends, and a capture the iteration broke off is ended before its error propagates."""
        torch.cuda.synchronize(self.r.device)
        torch.cuda.empty_cache()  # as torch.cuda.graph does: the capture gets the memory the cache held
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=pool_id(pool))
            try:
                out = self.iteration()
            except BaseException:
                try:
                    graph.capture_end()
                except Exception:  # the capture was invalidated by the iteration's own error, which is the cause
                    pass
                raise
            graph.capture_end()
        return out

    def _abandon(self, graph, pool, generator, rng) -> None:
        """Unwind a failed or rejected capture: the allocator told that no capture is under way, the graph's reference
        to ``pool`` released, the generator restored to ``rng`` (a clone from before the capture; None: keep it).

        torch's ``capture_end`` raises (an invalidated capture) before or after telling the allocator that the capture
        is over, and ``reset`` releases a failed capture's pool or not, depending on the torch version: both are done
        here only where torch left them undone (an allocator that still counted the capture would fail every later
        ``empty_cache`` and capture). The caller then drops ``pool`` (the MemPool's own reference) and calls
        :meth:`_settle`.
        """
        try:
            torch._C._cuda_endAllocateToPool(self.index, pool_id(pool))
        except RuntimeError:  # "not currently recording to mempool_id": capture_end did it
            pass
        graph.reset()
        if hasattr(pool, "use_count") and pool.use_count() > 1:  # this torch keeps the capture's reference
            torch._C._cuda_releasePool(self.index, pool.id)
        if rng is not None:
            generator.graphsafe_set_state(rng)

    def _settle(self) -> str:
        """After an unwound capture: '' when the device and the allocator are healthy (``empty_cache`` frees the
        dropped pool's memory), else a clause saying what is wrong, for the fallback's warning."""
        try:
            torch.cuda.synchronize(self.r.device)  # a sticky CUDA error surfaces here rather than later
            torch.cuda.empty_cache()  # raises if the allocator still counts a capture as under way
        except RuntimeError as e:
            return f"; the CUDA allocator was not restored ({first_line(e)})"
        return ""

    def _state(self, named: list[tuple[str, Tensor]], generator) -> dict[str, Tensor]:
        torch.cuda.synchronize(self.r.device)
        return {**snapshot(named), "CUDA RNG state": generator.get_state(), "CPU RNG state": torch.get_rng_state()}

    def _restore(self, named: list[tuple[str, Tensor]], saved: dict[str, Tensor], generator) -> None:
        with torch.no_grad():
            for name, t in named:
                t.copy_(saved[name])
        generator.set_state(saved["CUDA RNG state"])  # in place: the graph holds this generator's state object
        torch.set_rng_state(saved["CPU RNG state"])

    def _check(self, graph, out, named, before, generator) -> tuple[tuple[Parts, Parts], Check]:
        """Run the iteration eagerly from the state before the capture, put that state back, replay the graph, and
        compare. On a mismatch the eager iteration's state is put back (its results are returned), as if the run
        had been eager throughout."""
        with held_back(self.r.schedulers):
            eager_out = self._side_stream()
        eager = {**self._state(named, generator), **snapshot(output_tensors(eager_out))}
        self._restore(named, before, generator)
        graph.replay()
        got = {**self._state(named, generator), **snapshot(output_tensors(out))}
        check = compare(before, eager, got, self.exact)
        if check.first_bad is not None:
            self._restore(named, eager, generator)
        return eager_out, check

    def _fall_back(self, why: str) -> None:
        """Eager from now on, with one warning saying why."""
        self.eager, self.reason = True, why
        self.status = f"eager fallback ({why})"
        self.log.warning(f"fast path: the training iteration runs eagerly from now on, not as a CUDA graph: {why}")


def new_pool():
    """A private memory pool for one graph: a ``torch.cuda.MemPool`` (its use count tells whether a failed capture
    still holds it), or a bare pool handle where this torch has no MemPool."""
    return torch.cuda.MemPool() if hasattr(torch.cuda, "MemPool") else torch.cuda.graph_pool_handle()


def pool_id(pool):
    return pool.id if hasattr(pool, "id") else pool


def first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:240] if lines else 'no message'}"
