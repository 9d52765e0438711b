"""`ganbench train`: the single entrypoint. Compose the config -> build the objects -> run the loop.

The loop never branches on a loss or constraint name: the loss brings its terms and penalties, the constraint its
wrapper, penalties and post-step hook. Whether a term runs is decided once, before the loop.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ganbench import checkpoint, config
from ganbench.errors import GanbenchError
from ganbench.logger import Progress, RunLogger
from ganbench.step import d_step, ema_update, g_step, lipschitz_estimate

log = logging.getLogger("ganbench")

# Signals that end a run cleanly with a checkpoint: Ctrl-C, `kill`, and Slurm's pre-emption warning.
STOP_SIGNALS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GanbenchError(f"device={name} was asked for but CUDA is not available here; use device=cpu or device=auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GanbenchError(f"device={name} is not a device; use auto, cpu, cuda or cuda:N.") from None


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

    def state(self) -> dict:
        return {
            "step": self.step,
            "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
            "z_fixed": self.z_fixed.cpu(),
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []},
            "history": json.dumps(self.history),
            "identity": config.identity(self.cfg),
        }

    def restore(self, state: dict, path: Path) -> None:
        config.check_resume_identity(state.get("identity", {}), config.identity(self.cfg), path)
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
    schedulers = []
    if cfg.optim.decay == "linear":
        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: max(0.0, 1.0 - i / cfg.steps))
                      for o in (opt_g, opt_d)]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_decay > 0 else None
    # The fixed z of the sample grid comes from its own generator: it never shifts the training RNG stream.
    z_fixed = G.sample_z(64, device=device, generator=torch.Generator(device).manual_seed(cfg.seed + 1))
    return Run(cfg, device, dataset, G, D, G_ema, loss, constraint, opt_g, opt_d, schedulers, z_fixed)


def generate(G: torch.nn.Module, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """G(z) in eval mode, no grad, in chunks; G's train/eval mode is restored."""
    was_training = G.training
    G.eval()
    with torch.no_grad():
        out = torch.cat([G(chunk) for chunk in z.split(batch)])
    G.train(was_training)
    return out


def evaluate(run: Run) -> tuple[dict, dict]:
    """Metrics of the sampling generator (EMA if on) and their protocol.

    2D toys: modes, hq, w1 (PacGAN protocol). Images: ``metrics.names`` (fd_classifier by default; fid, kid).
    Evaluation randomness is seeded by (seed, step) in a forked RNG: evaluating never changes the training trajectory.
    """
    dataset, G = run.dataset, run.G_ema if run.G_ema is not None else run.G
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        torch.manual_seed(run.cfg.seed * 1_000_003 + run.step)
        if not hasattr(dataset, "centers"):
            from ganbench.metrics.image import evaluate_images

            return evaluate_images(lambda n: generate(G, G.sample_z(n, device=run.device)), dataset,
                                   run.cfg.metrics, run.device)
        from ganbench.metrics.toy2d import toy_metrics

        n = run.cfg.eval_samples
        fake = generate(G, G.sample_z(n, device=run.device))
        real = dataset.sample(n)
    protocol = {"toy": {"samples_fake": n, "samples_real": n, "high_quality": "within 3 std of the nearest mode centre",
                        "modes": "centres nearest to at least one high-quality sample (VEEGAN/PacGAN)",
                        "w1": "exact EMD (POT ot.emd2), Euclidean cost", "generator": "ema" if run.G_ema else "G"}}
    return toy_metrics(fake.cpu(), real.cpu(), dataset.centers.cpu(), dataset.std), protocol


def primary_metric(cfg: DictConfig, metrics: dict) -> str | None:
    """The metric that ranks checkpoints (lower is better): w1 on 2D toys, metrics.primary on images."""
    name = "w1" if "w1" in metrics else cfg.metrics.primary
    return name if name in metrics and math.isfinite(metrics[name]) else None


def write_metrics(run: Run, run_dir: Path, status: str, metrics: dict, protocol: dict, wall_time: float,
                  error: str | None = None):
    record = {
        "step": run.step, "status": status, "metrics": metrics, "protocol": protocol,
        "wall_time_s": round(wall_time, 3), "history": run.history,
        "config": OmegaConf.to_container(run.cfg, resolve=True),
    }
    if error:
        record["error"] = error
    text = json.dumps(record, indent=2, default=str).encode()
    checkpoint.atomic_write_bytes(run_dir / "metrics.json", lambda f: f.write(text))


class _Stop:
    """Records a stop signal; the loop checks it once per step (a host bool, no GPU sync)."""

    def __init__(self):
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

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one GAN as configured; write TensorBoard events, samples, checkpoints and metrics.json to run_dir."""
    t_start = time.time()
    config.validate(cfg)
    device = resolve_device(cfg.device)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    run_dir.mkdir(parents=True, exist_ok=True)

    # Build everything, then restore a checkpoint if asked.
    r = build(cfg, device)
    ckpt_dir = run_dir / "checkpoints"
    resume_from = checkpoint.find(run_dir if cfg.resume == "auto" else cfg.resume) if cfg.resume else None
    if resume_from is not None:
        r.restore(checkpoint.load(resume_from), resume_from)
        log.info(f"resumed from {resume_from} at step {r.step}")
    elif cfg.resume not in (None, "auto"):
        raise GanbenchError(f"resume={cfg.resume} holds no checkpoint (looked for checkpoints/last.pt and prev.pt).")
    if r.step >= cfg.steps:
        log.info(f"nothing to do: the checkpoint is at step {r.step} and steps={cfg.steps}")

    # Decide once which terms run.
    Dw = r.constraint.wrap(r.D)
    penalties = tuple(r.loss.penalties) + tuple(r.constraint.penalties)
    g_batch = cfg.g_batch_size or cfg.batch_size
    tb = RunLogger(run_dir, purge_step=r.step + 1 if r.step else None)
    if r.step == 0:
        tb.text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)
    progress = Progress(cfg.steps, r.step, cfg.progress)
    log.info(f"run dir: {run_dir}  device: {device}  params G {sum(p.numel() for p in r.G.parameters()):,} "
             f"D {sum(p.numel() for p in r.D.parameters()):,}")

    # Running sums of each logged scalar over the current log interval, on the device (no sync).
    sums: dict[str, torch.Tensor] = {}
    count = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    last_good = r.step
    metrics: dict = r.history[-1]["metrics"] if r.history else {}
    protocol: dict = {}
    status, error, exit_code = "failed", None, 0
    t_interval, step_interval = time.perf_counter(), r.step

    def check_finite() -> None:
        bad = int(first_bad)  # note: a GPU sync point, taken only at log and checkpoint intervals
        if bad >= 0:
            terms = [k for k, v in sums.items() if not math.isfinite(float(v))]
            raise GanbenchError(f"training diverged: a non-finite loss appeared at step {bad} "
                                f"(terms: {', '.join(terms) or 'loss/d or loss/g'}); the last good checkpoint "
                                f"(step {last_good}) is kept in {ckpt_dir}.")

    def save_checkpoint() -> None:
        nonlocal last_good
        check_finite()
        if not all(torch.isfinite(p).all() for p in r.D.parameters()):
            raise GanbenchError(f"training diverged: D's weights became non-finite by step {r.step}; the last good "
                                f"checkpoint (step {last_good}) is kept in {ckpt_dir}.")
        checkpoint.save(r.state(), ckpt_dir)
        last_good = r.step

    with _Stop() as stop:
        try:
            while r.step < cfg.steps:
                # Discriminator: n_dis updates on fresh real batches.
                for _ in range(cfg.n_dis):
                    d = d_step(r.G, r.D, Dw, r.loss, penalties, r.constraint, r.opt_d,
                               r.dataset.sample(cfg.batch_size), r.G.sample_z(cfg.batch_size, device=device))
                # Generator.
                real_g = r.dataset.sample(g_batch) if r.loss.g_uses_real else None
                g = g_step(r.G, r.D, Dw, r.loss, r.opt_g, r.G.sample_z(g_batch, device=device), real_g)
                for s in r.schedulers:
                    s.step()
                if r.G_ema is not None:
                    ema_update(r.G_ema, r.G, cfg.ema_decay)
                r.step += 1
                progress.update()

                # Accumulate scalars on the device; remember the first non-finite step without syncing.
                for k, v in (("loss/d", d.total), ("loss/g", g.total), *d.parts.items(), *g.parts.items()):
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                ok = torch.isfinite(d.total) & torch.isfinite(g.total)
                first_bad = torch.where(ok | (first_bad >= 0), first_bad, r.step)

                last = r.step == cfg.steps
                intervals = (cfg.log_every, cfg.sample_every, cfg.eval_every, cfg.ckpt_every)
                if last or any(r.step % k == 0 for k in intervals):
                    check_finite()  # nothing is logged, sampled, evaluated or saved from a diverged model
                if r.step % cfg.log_every == 0 or last:
                    values = {k: float(v) / count for k, v in sums.items()}
                    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                        torch.manual_seed(cfg.seed * 1_000_003 + r.step)
                        real = r.dataset.sample(cfg.batch_size)
                        fake = generate(r.G, r.G.sample_z(cfg.batch_size, device=device))
                        values.update({k: float(v) for k, v in lipschitz_estimate(Dw, r.D, real, fake).items()})
                    now = time.perf_counter()
                    rate = (r.step - step_interval) / max(now - t_interval, 1e-9)
                    values["perf/steps_per_s"] = rate
                    values["perf/d_images_per_s"] = rate * cfg.n_dis * cfg.batch_size * 2
                    values["lr/g"] = r.opt_g.param_groups[0]["lr"]
                    values["lr/d"] = r.opt_d.param_groups[0]["lr"]
                    tb.scalars(values, r.step)
                    progress.report(r.step, values, rate)
                    sums, count, t_interval, step_interval = {}, 0, now, r.step
                if r.step % cfg.sample_every == 0 or last:
                    sampler = r.G_ema if r.G_ema is not None else r.G
                    tb.samples(generate(sampler, r.z_fixed), r.step, getattr(r.dataset, "centers", None))
                new_best = False
                if r.step % cfg.eval_every == 0 or last:
                    metrics, new_protocol = evaluate(r)
                    if new_protocol != protocol:
                        protocol = new_protocol
                        tb.text("protocol", "```\n" + json.dumps(protocol, indent=2) + "\n```", r.step)
                    if metrics:
                        r.history.append({"step": r.step, "metrics": metrics})
                        tb.scalars({f"metrics/{k}": v for k, v in metrics.items()}, r.step)
                        log.info(f"step {r.step}: " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                        key = primary_metric(cfg, metrics)
                        new_best = key is not None and all(
                            h["metrics"].get(key, math.inf) >= metrics[key] for h in r.history[:-1])
                        write_metrics(r, run_dir, "running", metrics, protocol, time.time() - t_start)
                if r.step % cfg.ckpt_every == 0 or last or new_best:
                    save_checkpoint()
                if new_best:  # the best checkpoint by the primary metric, for `ganbench eval --checkpoint best`
                    shutil.copyfile(ckpt_dir / "last.pt", ckpt_dir / ".best.pt.tmp")
                    os.replace(ckpt_dir / ".best.pt.tmp", ckpt_dir / "best.pt")
                if stop.signum is not None:
                    break
            status = "completed"
            if stop.signum is not None and r.step < cfg.steps:
                save_checkpoint()
                status, exit_code = "interrupted", STOP_SIGNALS[stop.signum]
                log.info(f"stopped by {signal.Signals(stop.signum).name} at step {r.step}; checkpoint saved in "
                         f"{ckpt_dir}; continue with: ganbench train resume={run_dir}")
        except GanbenchError as e:
            status, error = "diverged" if "diverged" in str(e) else "failed", str(e)
            raise
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the signal handler's reach
            status = "interrupted"
            raise
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            raise
        finally:
            progress.close()
            write_metrics(r, run_dir, status, metrics, protocol, time.time() - t_start, error)
            if status == "completed":
                tb.hparams(config.hparams(cfg), metrics)
            tb.close()
    if exit_code:
        raise SystemExit(exit_code)
    return metrics


# Failed jobs of this process's multirun sweep, for the exit status of `ganbench train -m`.
FAILED_JOBS: list[str] = []


class SweepFailures(Callback):
    """At the end of a sweep, in the main process: collect the jobs whose metrics.json says failed or diverged.

    With the joblib or submitit launchers the jobs run in other processes, so only their files can tell.
    """

    def on_multirun_start(self, config, **kwargs):
        self.t0 = time.time()

    def on_multirun_end(self, config, **kwargs):
        for path in sorted(Path(config.hydra.sweep.dir).glob("*/metrics.json")):
            if path.stat().st_mtime < self.t0:
                continue  # a job of an earlier sweep into the same dir
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("status") in ("failed", "diverged"):
                FAILED_JOBS.append(f"{path.parent}: {record.get('error') or record['status']}")


def task(cfg: DictConfig) -> dict | None:
    """Hydra task: run one job; a user error is one line, and in a sweep it fails that job only."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        return run(cfg, run_dir)
    except GanbenchError as e:
        message = str(e)
    except torch.OutOfMemoryError:
        message = (f"out of memory on {cfg.device} with batch_size={cfg.batch_size}; "
                   f"lower batch_size or use a smaller model.")
    except Exception as e:  # a bug, not the user's input: keep the traceback in the run's log
        log.debug(traceback.format_exc())
        (run_dir / "error.log").write_text(traceback.format_exc())
        message = f"internal error {type(e).__name__}: {e} (traceback in {run_dir / 'error.log'})"
    if not (run_dir / "metrics.json").exists():  # failed before training: leave a record for `ganbench report`
        record = {"step": 0, "status": "failed", "error": message, "metrics": {},
                  "config": OmegaConf.to_container(cfg, resolve=False)}
        text = json.dumps(record, indent=2, default=str).encode()
        checkpoint.atomic_write_bytes(run_dir / "metrics.json", lambda f: f.write(text))
    if multirun:  # the sweep goes on; SweepFailures lists this job at its end
        log.error(f"ganbench: error: {message}")
        return None
    print(f"ganbench: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: list[str]) -> int:
    """`ganbench train [overrides] [-m]`: check the overrides up front (one-line errors), then hand over to Hydra."""
    import hydra

    argv = config.prepare_argv(argv)
    hydra_main = hydra.main(config_path="pkg://ganbench.conf", config_name="train", version_base="1.3")(task)
    old_argv = sys.argv
    sys.argv = ["ganbench train", *argv]
    try:
        hydra_main()
    finally:
        sys.argv = old_argv
    if FAILED_JOBS:
        print(f"ganbench: error: {len(FAILED_JOBS)} job(s) of the sweep failed; the others finished:", file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
