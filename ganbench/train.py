"""The training loop: n_dis D steps, one G step, the LR schedule and EMA, then the periodic duties.

``run`` reads as the algorithm; each periodic duty (scalars and the Lipschitz estimate, the sample grid, evaluation
with the best checkpoint, checkpoints, metrics.json, stop signals) is one named function or small object below it,
called from one place. The loop never branches on a loss or constraint name: the loss brings its terms and
penalties, the constraint its wrapper, penalties and post-step hook; which terms run is decided once, before the loop.
The Hydra entry point of `ganbench train` is :mod:`ganbench.launch`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ganbench import checkpoint, config, distributed, fastpath, rundir
from ganbench.build import Run, build, critic_steps, generate, resolve_device
from ganbench.errors import GanbenchError
from ganbench.logger import Progress, RunLogger
from ganbench.metrics.suite import evaluate, primary_metric
from ganbench.step import Parts, d_step, ema_update, g_step, lipschitz_estimate

log = logging.getLogger("ganbench")

# Signals that end a run cleanly with a checkpoint: Ctrl-C, `kill`, and the pre-emption / time-limit warnings of a
# cluster (Slurm's `--signal=USR1@90`; USR2 is submitit's, whose own handler then requeues the job: StopSignals).
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138, signal.SIGUSR2: 140}


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one GAN as configured; write TensorBoard events, samples, checkpoints and metrics.json to run_dir."""
    record = Record(run_dir, time.time())
    config.validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    r = build(cfg, device)
    ckpts = Checkpoints(run_dir / "checkpoints", resume(r, run_dir))
    record.attach(r, ckpts)
    Dw = r.constraint.wrap(r.D)  # GN/GraN wrap D's forward; the other constraints return D itself
    penalties = r.constraint.run_penalties(r.loss)  # the loss's own (unless GN/GraN replace it), the constraint's
    iteration = partial(train_iteration, r, Dw, penalties)
    if not r.world.active:  # under torchrun the iteration holds collectives: it stays eager
        iteration = fastpath.make_iteration(r, iteration, cfg, log)  # CUDA graph
    record.execution = partial(fastpath.execution, iteration, r, r.step)  # graph or eager, and why
    tb = RunLogger(run_dir, purge_step=r.step + 1 if r.step else None) if r.world.main else distributed.Silent()
    announce(r, run_dir, tb)
    scalars = Scalars(r, Dw, tb, Progress(cfg.steps, r.step, cfg.progress and r.world.main))
    exit_code = 0
    with StopSignals(r.world) as stop:
        try:
            while r.step < cfg.steps:
                if r.noise is not None:  # on the host, outside any CUDA graph: the graph reads the tensor
                    r.noise.at(r.step)
                d, g = iteration()
                r.step += 1
                scalars.add(d, g)
                due = Due(cfg, r.step)
                if due.anything:
                    scalars.check_finite(ckpts.describe())  # nothing is logged, sampled or saved from a diverged model
                if due.log:
                    scalars.write()
                if due.sample and r.world.main:  # eval-mode G on a fixed z: no RNG, no collective to skip
                    with ckpts.naming_the_last_good():  # a full disk: one line, as at a checkpoint
                        tb.samples(generate(r.sampler, r.z_fixed), r.step, getattr(r.dataset, "centers", None))
                new_best = due.eval and record.evaluate(r, tb)
                if due.ckpt or new_best:
                    ckpts.save(r, scalars, best=new_best)
                if stop.poll():  # under torchrun: a signal to any rank stops every rank after this step
                    break
            record.status = "completed"
            if stop.signum is not None and r.step < cfg.steps:
                ckpts.save(r, scalars)
                record.status, exit_code = "interrupted", STOP_SIGNALS[stop.signum]
                log.info(f"stopped by {signal.Signals(stop.signum).name} at step {r.step}; checkpoint saved in "
                         f"{ckpts.dir}; continue with: ganbench train resume={run_dir}")
        except BaseException as e:
            record.failed(e)
            raise
        finally:
            scalars.progress.close()
            record.write()
            record.to_tensorboard(tb)
            tb.close()
    if exit_code:
        stop.pass_on()  # e.g. submitit's requeue, now that the checkpoint is saved
        raise SystemExit(exit_code)
    return record.metrics


def train_iteration(r: Run, Dw: Callable, penalties: tuple) -> tuple[Parts, Parts]:
    """One iteration of the algorithm: n_dis D updates (critic_schedule: a burst) on fresh real batches, one G update,
    LR schedule, EMA of G."""
    cfg, device = r.cfg, r.device
    batch = r.world.share(cfg.batch_size)  # batch_size is the global batch; under torchrun each rank draws its part
    for _ in range(critic_steps(cfg, r.step)):
        d = d_step(r.G, r.D, Dw, r.loss, penalties, r.constraint, r.opt_d,
                   r.dataset.sample(batch), r.G.sample_z(batch, device=device), r.noise)
    g_batch = r.world.share(cfg.g_batch_size or cfg.batch_size)
    real_g = r.dataset.sample(g_batch) if r.loss.g_uses_real else None
    g = g_step(r.G, r.D, Dw, r.loss, r.opt_g, r.G.sample_z(g_batch, device=device), real_g, r.noise)
    for s in r.schedulers:
        s.step()
    if r.G_ema is not None:
        ema_update(r.G_ema, r.G, cfg.ema_decay)
    return d, g


def resume(r: Run, run_dir: Path) -> tuple[Path, int] | None:
    """Restore the checkpoint ``resume=`` names (``auto``: this run dir's newest loadable one, if any, falling back
    to prev.pt when last.pt is damaged); returns (its path, its step), or None."""
    cfg = r.cfg
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        found = rundir.load_latest(run_dir)
        if found is None:
            return None
        state, path = found
    else:
        path = rundir.find_checkpoint(cfg.resume)
        if path is None:
            raise GanbenchError(f"resume={cfg.resume} holds no checkpoint "
                                f"(looked for checkpoints/last.pt and prev.pt).")
        state = checkpoint.load(path)
    r.restore(state, path)
    log.info(f"resumed from {path} at step {r.step}")
    if r.step >= cfg.steps:
        log.info(f"nothing to do: the checkpoint is at step {r.step} and steps={cfg.steps}")
    return path, r.step


def announce(r: Run, run_dir: Path, tb: RunLogger) -> None:
    """The run's first lines: where it writes, on what, the model sizes, and what a stacked constraint runs."""
    if r.step == 0:
        tb.text("config", "```\n" + OmegaConf.to_yaml(r.cfg) + "\n```", 0)
    log.info(f"run dir: {run_dir}  device: {r.device}  params G {sum(p.numel() for p in r.G.parameters()):,} "
             f"D {sum(p.numel() for p in r.D.parameters()):,}")
    note = r.constraint.note(r.loss)
    if note:
        log.info(note)
    warning = r.constraint.warning(r.loss)
    if warning:
        log.warning(warning)


class Due:
    """Which periodic duties fall on ``step`` (every one of them also runs at the last step)."""

    def __init__(self, cfg: DictConfig, step: int):
        last = step == cfg.steps
        self.log, self.sample, self.eval, self.ckpt = (
            last or step % every == 0 for every in (cfg.log_every, cfg.sample_every, cfg.eval_every, cfg.ckpt_every))
        self.anything = self.log or self.sample or self.eval or self.ckpt


class Scalars:
    """The logged scalars: running sums on the device, read on the host once per ``log_every`` steps.

    Also remembers the first step with a non-finite loss without a host sync (a device-side ``where``), so a run can
    tell exactly where it diverged when it next reads anything.
    """

    def __init__(self, r: Run, Dw: Callable, tb: RunLogger, progress: Progress):
        self.r, self.Dw, self.tb, self.progress = r, Dw, tb, progress
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=r.device)
        self.t_interval, self.step_interval = time.perf_counter(), r.step

    def add(self, d: Parts, g: Parts) -> None:
        self.progress.update()
        for k, v in (("loss/d", d.total), ("loss/g", g.total), *d.parts.items(), *g.parts.items()):
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        ok = torch.isfinite(d.total) & torch.isfinite(g.total)
        self.first_bad = torch.where(ok | (self.first_bad >= 0), self.first_bad, self.r.step)

    def check_finite(self, saved: str) -> None:
        """Raise 'training diverged' naming the first bad step and terms; ``saved`` says what checkpoint is kept."""
        bad = self.r.world.first_bad(self.first_bad)  # any rank's; a GPU sync point, only at duty intervals
        if bad >= 0:
            terms = [k for k, v in self.sums.items() if not math.isfinite(float(v))]
            raise GanbenchError(f"training diverged: a non-finite loss appeared at step {bad} "
                                f"(terms: {', '.join(terms) or 'loss/d or loss/g'}); {saved}.")

    def write(self) -> None:
        """Interval means, the Lipschitz estimate, speed and learning rates to TensorBoard and the progress bar."""
        r = self.r
        values = {k: float(v) / self.count for k, v in r.world.mean(self.sums).items()}  # the mean over ranks
        if r.world.main:  # only rank 0 writes
            values.update(lipschitz(r, self.Dw))
        now = time.perf_counter()
        rate = (r.step - self.step_interval) / max(now - self.t_interval, 1e-9)
        values["perf/steps_per_s"] = rate
        values["perf/d_images_per_s"] = rate * r.cfg.n_dis * r.cfg.batch_size * 2
        values["lr/g"] = float(r.opt_g.param_groups[0]["lr"])  # a 0-dim tensor on the CUDA graph path
        values["lr/d"] = float(r.opt_d.param_groups[0]["lr"])
        self.tb.scalars(values, r.step)
        self.progress.report(r.step, values, rate)
        self.sums, self.count, self.t_interval, self.step_interval = {}, 0, now, r.step


def lipschitz(r: Run, Dw: Callable) -> dict[str, float]:
    """Empirical ‖∇ₓD̂‖ on a fresh real batch, G's samples and interpolates, in a forked RNG seeded by the step."""
    device = r.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(rundir.step_seed(r.cfg.seed, r.step))
        real = r.dataset.sample(r.cfg.batch_size)
        fake = generate(r.G, r.G.sample_z(r.cfg.batch_size, device=device))
        return {k: float(v) for k, v in lipschitz_estimate(Dw, r.D, real, fake).items()}


class Checkpoints:
    """checkpoints/last.pt every ``ckpt_every`` steps, at the end and on a stop signal; best.pt by the primary metric.

    Knows the last good checkpoint (this run's newest, or the one it resumed from), so a divergence message says
    what is true.
    """

    def __init__(self, ckpt_dir: Path, resumed: tuple[Path, int] | None):
        self.dir = ckpt_dir
        self.last_good = resumed  # (path, step) of the newest complete checkpoint of this run, or None

    def describe(self) -> str:
        return rundir.describe_last_good(self.last_good)

    @contextlib.contextmanager
    def naming_the_last_good(self):
        """A failed write (a full disk) inside says what is kept and how to go on: the last good checkpoint."""
        try:
            yield
        except checkpoint.WriteFailed as e:
            raise e.with_context(rundir.after_write_failure(self.last_good, self.dir.parent)) from None

    def save(self, r: Run, scalars: Scalars, best: bool = False) -> None:
        scalars.check_finite(self.describe())
        if not all(torch.isfinite(p).all() for p in r.D.parameters()):
            raise GanbenchError(f"training diverged: D's weights became non-finite by step {r.step}; "
                                f"{self.describe()}.")
        state = r.state()  # under torchrun every rank takes part (its RNG state); rank 0 writes
        if not r.world.main:
            self.last_good = self.dir / "last.pt", r.step
            return
        with self.naming_the_last_good():
            self.last_good = checkpoint.save(state, self.dir), r.step
            if best:  # for `ganbench eval --checkpoint best`
                checkpoint.copy_file(self.dir / "last.pt", self.dir / "best.pt")


class Record:
    """metrics.json and the evaluations behind it: status, latest metrics and protocol, history, config.

    Written atomically after every evaluation (status "running") and once at the end, whatever the end.
    """

    def __init__(self, run_dir: Path, t_start: float):
        self.run_dir, self.t_start = run_dir, t_start
        self.r: Run | None = None
        self.ckpts: Checkpoints | None = None
        self.status, self.error = "failed", None
        self.metrics: dict = {}
        self.protocol: dict = {}
        self.execution: Callable[[], dict] | None = None  # how the iteration runs (fastpath.execution)

    def attach(self, r: Run, ckpts: Checkpoints) -> None:
        self.r, self.ckpts = r, ckpts
        self.metrics = r.history[-1]["metrics"] if r.history else {}

    def evaluate(self, r: Run, tb: RunLogger) -> bool:
        """Evaluate the sampling generator; log and record the metrics; True when they are the best so far.

        Under torchrun rank 0 evaluates (its RNG forked, as always) while the others wait for its verdict.
        """
        return r.world.broadcast(self._evaluate(r, tb) if r.world.main else None)

    def _evaluate(self, r: Run, tb: RunLogger) -> bool:
        metrics, protocol = evaluate(r.sampler, r.dataset, r.cfg, r.device,
                                     seed=rundir.step_seed(r.cfg.seed, r.step),
                                     generator="ema" if r.G_ema is not None else "G")
        if protocol != self.protocol:
            self.protocol = protocol
            tb.text("protocol", "```\n" + json.dumps(protocol, indent=2) + "\n```", r.step)
        if not metrics:
            return False
        self.metrics = metrics
        r.history.append({"step": r.step, "metrics": metrics})
        tb.scalars({f"metrics/{k}": v for k, v in metrics.items()}, r.step)
        log.info(f"step {r.step}: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        key = primary_metric(r.cfg, metrics)
        best = key is not None and all(h["metrics"].get(key, math.inf) >= metrics[key] for h in r.history[:-1])
        self.status = "running"
        self.write()
        self.status = "failed"  # until the loop says otherwise
        return best

    def to_tensorboard(self, tb: RunLogger) -> None:
        """At the end of the run: how it executed (text), and for a completed run the HParams row."""
        execution = self.execution() if self.execution is not None else None
        if execution is not None:
            tb.text("execution", fastpath.execution_text(execution), self.r.step)
        if self.status == "completed":
            path = {"execution": execution["path"]} if execution else {}
            tb.hparams({**config.hparams(self.r.cfg), **path}, self.metrics)

    def failed(self, e: BaseException) -> None:
        if isinstance(e, GanbenchError):
            self.status, self.error = "diverged" if "diverged" in str(e) else "failed", str(e)
        elif isinstance(e, KeyboardInterrupt):  # a second Ctrl-C, or one outside the signal handler's reach
            self.status = "interrupted"
        else:
            self.status, self.error = "failed", f"{type(e).__name__}: {e}"

    def write(self) -> None:
        r = self.r
        if not r.world.main:  # one writer: rank 0
            return
        record = {
            "step": r.step, "status": self.status, "metrics": self.metrics, "protocol": self.protocol,
            "wall_time_s": round(time.time() - self.t_start, 3), "history": r.history,
            "config": OmegaConf.to_container(r.cfg, resolve=True),
        }
        if self.error:
            record["error"] = self.error
        if self.execution is not None:
            record["execution"] = self.execution()
        try:
            rundir.write_record(self.run_dir, record)
        except checkpoint.WriteFailed as e:
            if self.error is not None:  # the run already failed (often for the same reason): keep that message
                log.warning(f"{e} (the run had already stopped: {self.error})")
                return
            raise e.with_context(rundir.after_write_failure(self.ckpts.last_good, self.run_dir)) from None


class StopSignals:
    """Records a stop signal; the loop checks it once per step (a host bool, no GPU sync).

    A handler that was installed before (submitit's: checkpoint the job's callable and requeue it) is not lost: after
    the run has saved its checkpoint, :meth:`pass_on` hands the signal to it. Python's defaults (terminate, or
    KeyboardInterrupt for Ctrl-C) are not passed on: the run exits with its own code.
    """

    def __init__(self, world: distributed.World | None = None):
        self.world = world or distributed.current()
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in STOP_SIGNALS:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not in the main thread (e.g. some launchers): signals stay as they were
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def poll(self) -> bool:
        """True once a stop signal came; under torchrun, once one came to any rank (all ranks agree, every step)."""
        self.signum = self.world.agree_signal(self.signum)
        return self.signum is not None

    def pass_on(self) -> None:
        old = self._old.get(self.signum)
        if callable(old) and old is not signal.default_int_handler:
            old(self.signum, None)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
