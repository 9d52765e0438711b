"""One writer per run directory: an exclusive ``flock`` on ``<run dir>/.ganbench.lock``, which holds the owner's pid.

Two processes in one run directory (a requeued job while the old one still runs, a repeated command with a fixed
``hydra.run.dir``) would interleave checkpoints, metrics.json and TensorBoard events. The first process takes the lock
before anything of the run is written; a second one fails at once with one line naming the holder's pid and writes
nothing. The kernel releases a ``flock`` when its process ends, however it ends (kill -9 included), so a stale lock
file is harmless: the pid in it is information, the lock is the truth. The file is left in place (removing it would
let two processes lock two different files of the same name).

Hydra configures a job's logging before it writes ``.hydra/`` or calls the task, so the earliest point that knows the
job's directory, in every launcher and for every job of a sweep, is the log-file handler: ``conf/hydra/job_logging/
ganbench.yaml`` builds it with :func:`locked_log_file`. :func:`hold` is idempotent; the task calls it again in case
the logging config was overridden, and ``launch.ReleaseAtJobEnd`` releases it when the job ends, so a launcher's
long-lived worker process (joblib's) does not keep a finished job's directory locked. When the command line names an
existing run directory (``hydra.run.dir=``, ``resume=``), :func:`refuse_if_busy` probes the lock before the slow
imports and config checks, so a busy directory is refused within a second. Under torchrun only rank 0 locks (it alone
writes). This module imports nothing heavy: ``ganbench.cli`` calls it before torch is loaded.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
from pathlib import Path

from ganbench.errors import GanbenchError

LOCK_NAME = ".ganbench.lock"


log = logging.getLogger("ganbench")

# Write errors of a full or failing disk (as checkpoint.WRITE_REASONS; not imported: this module stays light).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


class RunDirBusy(GanbenchError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """The exclusive lock on one run directory, held by this process until :meth:`release` or its exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(os.path.abspath(run_dir))  # as Hydra spells the job's output_dir
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock without waiting, write our pid into the file; :class:`RunDirBusy` if another process has it.

        On a filesystem without ``flock`` (some network/parallel filesystems) the run goes on unprotected, with one
        warning: refusing to run there at all would be worse than the race the lock prevents.
        """
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # opening an existing file changes nothing in it
        except OSError as e:
            raise GanbenchError(f"cannot write the run directory {self.run_dir} ({e.strerror or e}); "
                                f"set hydra.run.dir to a writable place.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirBusy(_busy_message(self.run_dir, holder)) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP, ...: no locks on this filesystem
            log.warning(f"cannot lock the run directory {self.run_dir} ({e.strerror or e}): a second ganbench "
                        f"process in it would not be stopped")
        try:  # the pid is information only (the flock is the truth): a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _busy_message(run_dir: Path, holder: int | None) -> str:
    who = f"ganbench process {holder}" if holder else "another ganbench process"
    return f"run directory {run_dir} is in use by {who}; wait for it to finish, or give this run another hydra.run.dir."


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


# This process's lock: one run directory at a time (a sweep in one process moves from job to job).
_held: RunLock | None = None


def hold(run_dir: Path) -> RunLock:
    """Make this process the only writer of ``run_dir``: keep its lock (taken now, or already held), release any
    other run directory's lock this process held before. Raises :class:`RunDirBusy` if another process has it."""
    global _held
    run_dir = Path(os.path.abspath(run_dir))
    if _held is not None and _held.run_dir == run_dir and _held.fd is not None:
        return _held
    release()
    _held = RunLock(run_dir).acquire()
    return _held


def release() -> None:
    """Release this process's run-directory lock, if any (the kernel does it anyway when the process exits)."""
    global _held
    if _held is not None:
        _held.release()
        _held = None


def locked_log_file(filename: str, **kwargs) -> logging.FileHandler:
    """The run's ``train.log`` handler, made after taking the run directory's lock (Hydra's logging config calls it).

    Busy: print one line and exit 2 here (refused before it started, like a config error), before Hydra writes
    ``.hydra/`` into the other process's directory (an exception would become ``logging.config``'s multi-line error).
    """
    if not _follower_rank():
        try:
            hold(Path(filename).parent)
        except GanbenchError as e:
            print(f"ganbench: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    return RunLogFile(filename, **kwargs)


class RunLogFile(logging.FileHandler):
    """train.log: on a full disk its failed writes stay quiet (the run itself says it in one line), instead of
    logging's '--- Logging error ---' traceback on stderr for every later message."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            return
        super().handleError(record)


def refuse_if_busy(argv: list[str]) -> None:
    """`ganbench train ARGV`: if it names an existing run directory whose lock another process holds, RunDirBusy now.

    Only a single run that names its directory can meet another process's: a new timestamped directory cannot, and
    a sweep's jobs are locked one by one as they start. A probe, not the lock: it writes nothing (a command refused
    later, e.g. for a damaged checkpoint, leaves the directory as it was). Taking the real lock later (:func:`hold`)
    settles any race: at most one process gets it.
    """
    if _follower_rank() or any(a in ("-m", "--multirun") for a in argv):
        return
    run_dir = _named_run_dir(argv)
    if run_dir is None:
        return
    try:
        fd = os.open(Path(os.path.abspath(run_dir)) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file (a new or pre-lock directory), or unreadable: hold() decides later
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails only while someone holds the exclusive lock
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        holder = _read_pid(fd)
        raise RunDirBusy(_busy_message(Path(os.path.abspath(run_dir)), holder)) from None
    except OSError:  # no locks on this filesystem: hold() warns
        pass
    finally:
        os.close(fd)


def _named_run_dir(argv: list[str]) -> Path | None:
    """The run directory ``hydra.run.dir=`` or ``resume=<run dir | checkpoint>`` names (as config.prepare_argv
    resolves it), or None."""
    values = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    if values.get("hydra.run.dir"):
        return Path(values["hydra.run.dir"])
    resume = values.get("resume")
    if resume in (None, "", "null", "auto"):
        return None
    path = Path(resume)
    if path.is_file():
        path = path.parent
    return path.parent if path.name == "checkpoints" else path


def _follower_rank() -> bool:
    """True in a torchrun worker of rank > 0 (as ganbench.distributed.rank decides, without importing torch)."""
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))
    return launched and os.environ["RANK"] != "0"

