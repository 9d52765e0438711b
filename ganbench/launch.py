"""`ganbench train [overrides] [-m]`: let Hydra run each job of a checked command line.

The entry point above the loop: the CLI checks the overrides of every job up front
(:func:`ganbench.config.prepare_argv`, before torch loads: one-line errors), :func:`main` hands them to Hydra, which
composes the config and calls :func:`task` once per job (in this process, or in the joblib/submitit launchers'
workers), and :class:`SweepFailures` lists the failed jobs at the end of a sweep.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ganbench import checkpoint, config, distributed, rundir, study, torchrun
from ganbench.errors import GanbenchError
from ganbench.train import run

log = logging.getLogger("ganbench")

# Failed jobs of this process's multirun sweep, and how many jobs ended with a record, for the exit status of
# `ganbench train -m`.
FAILED_JOBS: list[str] = []
ENDED_JOBS = [0]


class SweepFailures(Callback):
    """A sweep's start and end, in the main process. At the start: a fresh sweep into a directory that holds earlier
    runs (two sweeps started in the same second share the default timestamped one) is refused before Hydra writes
    multirun.yaml. At the end: collect the jobs whose metrics.json says failed or diverged.

    With the joblib or submitit launchers the jobs run in other processes, so only their files can tell.
    """

    def on_multirun_start(self, config, **kwargs):
        self.t0 = time.time()
        if config.get("resume") in (None, "", "null"):
            _refuse_taken(Path(config.hydra.sweep.dir), sweep=True)

    def on_multirun_end(self, config, **kwargs):
        for path in sorted(Path(config.hydra.sweep.dir).glob("*/metrics.json")):
            if path.stat().st_mtime < self.t0:
                continue  # a job of an earlier sweep into the same dir
            try:
                record = rundir.read_record(path.parent)
            except rundir.RecordProblem:
                continue
            ENDED_JOBS[0] += 1
            if record.get("status") in ("failed", "diverged"):
                FAILED_JOBS.append(f"{path.parent}: {record.get('error') or record['status']}")


def _refuse_taken(path: Path, sweep: bool = False) -> None:
    """One line and exit 2 when a fresh run or sweep would write into ``path`` that holds earlier runs."""
    if rundir.follower_rank():
        return
    try:
        rundir.check_fresh(path, sweep=sweep)
    except rundir.RunDirTaken as e:
        print(f"ganbench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class ReleaseAtJobEnd(Callback):
    """Release the job's run-directory lock once Hydra is done with the job (a joblib worker lives on)."""

    def on_job_end(self, config, job_return, **kwargs):
        rundir.release()


def task(cfg: DictConfig) -> dict | None:
    """Hydra task: run one job; a user error is one line, and in a sweep it fails that job only."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if not distributed.current().main:  # torchrun's ranks > 0: rank 0 holds the lock, writes and reports
        return _follower(cfg, run_dir)
    try:
        rundir.hold(run_dir)  # already taken by the log-file handler, unless hydra/job_logging was overridden
    except rundir.RunDirBusy as e:  # the other process's directory: write nothing there, not even metrics.json
        if multirun:
            log.error(f"ganbench: error: {e}")
            return None
        print(f"ganbench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    checkpoint.remove_temps(run_dir)  # a killed writer's half-written temp files: the lock says nobody is writing
    rundir.restore_hydra_files(run_dir)  # a resumed sweep job keeps its own .hydra/ records
    threading.excepthook = _quiet_write_errors
    try:
        cfg = study.apply(cfg, run_dir)  # a study trial: its drawn values, and command.txt to rerun it alone
        done = multirun and rundir.nothing_to_do(cfg, run_dir)  # a requeued sweep job that had finished (a single
        if done:  # run was told before Hydra started): its files stay as they are
            log.info(done)
            return None
        return run(cfg, run_dir)
    except GanbenchError as e:
        message = str(e)
    except KeyboardInterrupt:  # Ctrl-C before the loop took the signal over: a record, then the CLI's one line
        _failed_record(cfg, run_dir, "interrupted", "stopped by Ctrl-C before training started")
        raise
    except torch.OutOfMemoryError:
        message = (f"out of memory on {cfg.device} with batch_size={cfg.batch_size}; "
                   f"lower batch_size or use a smaller model.")
    except Exception as e:
        message = distributed.peer_failure(e) or _unexpected(e, run_dir)  # under torchrun: another rank died
    _failed_record(cfg, run_dir, "failed", message)
    if multirun:  # the sweep goes on; SweepFailures lists this job at its end
        log.error(f"ganbench: error: {message}")
        return None
    print(f"ganbench: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _failed_record(cfg: DictConfig, run_dir: Path, status: str, message: str) -> None:
    """A job that ended before training wrote its record: leave one for `ganbench report` (none is overwritten)."""
    if os.path.lexists(run_dir / rundir.METRICS):
        return
    record = {"step": 0, "status": status, "error": message, "metrics": {},
              "config": OmegaConf.to_container(cfg, resolve=False)}
    try:
        rundir.write_record(run_dir, record)
    except checkpoint.WriteFailed as e:  # e.g. the disk is full: the first error is the one to show
        log.warning(str(e))


def _quiet_write_errors(args) -> None:
    """Threads' uncaught errors: a writer thread (TensorBoard's) on a full disk stays quiet, since the loop's next
    write raises the same error and the task makes it one line; anything else is printed as usual."""
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in checkpoint.WRITE_REASONS):
        threading.__excepthook__(args)


def _unexpected(e: Exception, run_dir: Path) -> str:
    """The one line for an error the loop does not turn into a GanbenchError itself."""
    if isinstance(e, OSError) and e.errno in checkpoint.WRITE_REASONS:  # e.g. TensorBoard events on a full disk
        return (f"cannot write {e.filename or 'into ' + str(run_dir)}: {checkpoint.WRITE_REASONS[e.errno]}; "
                f"{rundir.after_write_failure(rundir.last_good_on_disk(run_dir), run_dir)}")
    # a bug, not the user's input: keep the traceback in the run's log
    log.debug(traceback.format_exc())
    try:
        checkpoint.atomic_write_bytes(run_dir / "error.log", lambda f: f.write(traceback.format_exc().encode()))
    except checkpoint.WriteFailed:  # a full disk as well: the traceback goes to the console instead
        traceback.print_exc()
        return f"internal error {type(e).__name__}: {e}"
    return f"internal error {type(e).__name__}: {e} (traceback in {run_dir / 'error.log'})"


def _follower(cfg: DictConfig, run_dir: Path) -> dict | None:
    """A torchrun rank > 0: train and write nothing. A user error (a GanbenchError) comes to every rank at once and
    rank 0 says it; a collective that fails because another rank died is that rank's to tell; anything else is one
    line naming this rank."""
    try:
        return run(study.apply(cfg), run_dir)
    except GanbenchError:
        pass
    except Exception as e:
        if not distributed.peer_failure(e):
            first = (str(e).strip().splitlines() or [""])[0][:200]
            print(f"ganbench: error: rank {distributed.current().rank}: {type(e).__name__}: {first}", file=sys.stderr)
    raise SystemExit(1)


def _join_torchrun(argv: list[str]) -> list[str]:
    """Under torchrun: join the process group and give every rank the same run directory: rank 0's clock fills the
    ``${now:...}`` of hydra.run.dir (the ranks' own clocks can differ by a second). Ranks > 0 leave .hydra/ and
    train.log to rank 0 and log only warnings."""
    world = distributed.init_from_env()
    t0 = datetime.fromtimestamp(world.broadcast(time.time()))
    given = [o.split("=", 1)[1] for o in argv if o.startswith("hydra.run.dir=")]
    if given:
        template = given[-1]
    else:
        text = (importlib.resources.files(config.CONFIG_MODULE) / "train.yaml").read_text()
        template = OmegaConf.to_container(OmegaConf.create(text).hydra.run, resolve=False)["dir"]
    run_dir = re.sub(r"\$\{now:([^}]*)\}", lambda m: t0.strftime(m.group(1)), template)
    argv = [o for o in argv if not o.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    return argv if world.main else argv + ["hydra.output_subdir=null", "hydra/job_logging=none",
                                           "hydra/hydra_logging=none"]


def main(argv: list[str]) -> int:
    """`ganbench train [overrides] [-m]` on a command line that :func:`ganbench.config.prepare_argv` has checked and
    returned (the CLI checks it before this module, and torch, load): hand over to Hydra."""
    if torchrun.launched():
        argv = _join_torchrun(argv)
    hydra_main = hydra.main(config_path="pkg://ganbench.conf", config_name="train", version_base="1.3")(task)
    old_argv = sys.argv
    sys.argv = ["ganbench train", *argv]
    try:
        hydra_main()
    finally:
        sys.argv = old_argv
        distributed.shutdown()
    if FAILED_JOBS:
        others = ENDED_JOBS[0] - len(FAILED_JOBS)
        print(f"ganbench: error: {len(FAILED_JOBS)} job(s) of the sweep failed"
              + (f"; the other {others} finished:" if others > 0 else ":"), file=sys.stderr)
        for line in FAILED_JOBS:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
