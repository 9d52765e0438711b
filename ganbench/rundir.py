"""The run directory: its one writer (the lock), what it holds, how a run continues in it, and its metrics.json.

- **The lock.** One writer per run directory: an exclusive ``flock`` on ``<run dir>/.ganbench.lock``, which holds the
  owner's pid. Two processes in one directory (a requeued job while the old one still runs, a repeated command with a
  fixed ``hydra.run.dir``) would interleave checkpoints, metrics.json and TensorBoard events. The first process takes
  the lock before anything of the run is written; a second one fails at once with one line naming the holder's pid.
  The kernel releases a ``flock`` when its process ends, however it ends (kill -9 included), so a stale lock file is
  harmless: the pid in it is information, the lock is the truth. The file is left in place (removing it would let two
  processes lock two different files of the same name). Hydra configures a job's logging before it writes
  ``.hydra/`` or calls the task, so the earliest point that knows a sweep job's directory, in every launcher, is the
  log-file handler: ``conf/hydra/job_logging/ganbench.yaml`` builds it with :func:`locked_log_file`.
- **A fresh run never writes into another run's directory.** A directory that holds a run's records
  (:data:`RUN_RECORDS`) is refused with one line that names it and the two ways on: ``resume=<dir>`` or another
  directory. A named ``hydra.run.dir`` / ``hydra.sweep.dir`` is checked on the command line (:func:`prepare_train`,
  before Hydra writes anything); a default timestamped one that two runs share (the same second) is checked when
  Hydra has composed it (:func:`check_fresh`, from ``launch``'s callbacks), still before Hydra writes.
  ``resume=auto`` (a requeued job in its own directory) continues the run that is there or starts one.
- **Resume.** ``resume=<run dir | checkpoint>`` expands into that run's own overrides and directory
  (:func:`prepare_train`); the checkpoint must share :func:`identity` with the run; a run already at its last step
  is "nothing to do", and nothing is written. :func:`find_checkpoint` and :func:`load_latest` find the checkpoint
  (``resume=auto`` falls back to ``prev.pt`` when ``last.pt`` is damaged).
- **metrics.json.** :func:`write_record` is its one writer (atomic), :func:`read_record` its one reader, which says
  whether a record is missing or unreadable, and why.
- **The seed rule** of everything a run draws at step N outside its training stream: :func:`step_seed`.

This module imports nothing heavy at module level: ``ganbench.cli`` uses it before torch is loaded. The file format
and the atomic writes are :mod:`ganbench.checkpoint`'s; it is imported (with torch) only where a checkpoint is read or
a file is written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

from ganbench import config
from ganbench.errors import GanbenchError

log = logging.getLogger("ganbench")

LOCK_NAME = ".ganbench.lock"
METRICS = "metrics.json"
# What a run leaves in its directory; any one of them means the directory holds a run. TensorBoard's event files
# start with EVENTS.
RUN_RECORDS = ("metrics.json", "checkpoints", ".hydra", "train.log", "samples", "error.log")
EVENTS = "events.out.tfevents."
# What a sweep leaves in its directory besides its job directories.
SWEEP_RECORDS = ("multirun.yaml", "report.md", "report.csv")

# Write errors of a full or failing disk (as checkpoint.WRITE_REASONS; not imported: this module stays light).
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def step_seed(seed: int, step: int) -> int:
    """The seed of what a run draws at ``step`` outside its training stream (evaluation fakes, the Lipschitz batch,
    ``ganbench eval``; a torchrun rank's stream after a resume): a resumed run draws what a straight one drew."""
    return int(seed) * 1_000_003 + int(step)


# ---------------------------------------------------------------------------------------------------- the lock


class RunDirBusy(GanbenchError):
    """Another live process holds the run directory's lock."""


class RunDirTaken(GanbenchError):
    """A fresh run or sweep was pointed at a directory that holds another run's (or sweep's) records."""


class NothingToDo(Exception):
    """A resume whose checkpoint is already at the run's last step: exit 0, write nothing."""


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

    A busy directory, or a fresh sweep job's directory that holds another run: print one line and exit 2 here
    (refused before it started, like a config error), before Hydra writes ``.hydra/`` into it (an exception would
    become ``logging.config``'s multi-line error).
    """
    if not follower_rank():
        run_dir = Path(filename).parent
        try:
            resuming = _resuming()
            if not resuming:
                check_fresh(run_dir)
            hold(run_dir)
        except GanbenchError as e:
            print(f"ganbench: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if resuming:
            _keep_hydra_files(run_dir)
    return RunLogFile(filename, **kwargs)


# A resumed job's own .hydra/ files, read before Hydra rewrites them (see :func:`restore_hydra_files`).
_kept_hydra: dict[Path, dict[str, bytes]] = {}


def _keep_hydra_files(run_dir: Path) -> None:
    folder = Path(os.path.abspath(run_dir)) / ".hydra"
    try:
        _kept_hydra[folder.parent] = {p.name: p.read_bytes() for p in folder.glob("*.yaml") if p.is_file()}
    except OSError:  # unreadable: nothing to put back, as for a run that has none
        _kept_hydra.pop(folder.parent, None)


def restore_hydra_files(run_dir: Path) -> None:
    """Put a resumed sweep job's ``.hydra/`` files back as the run wrote them. A single run resumes with
    ``hydra.output_subdir=null`` (:func:`prepare_train`); a sweep job with ``resume=auto`` cannot, and Hydra rewrites
    them between the log handler (:func:`locked_log_file`, which read them) and the task: the run's record of its own
    overrides and config would then say what a later command asked, even for a finished job that does nothing."""
    kept = _kept_hydra.pop(Path(os.path.abspath(run_dir)), None)
    if not kept:
        return
    from ganbench import checkpoint

    for name, data in kept.items():
        path = Path(run_dir) / ".hydra" / name
        try:
            if path.read_bytes() == data:
                continue
        except OSError:
            pass
        checkpoint.atomic_write_bytes(path, lambda f, data=data: f.write(data))


def _resuming() -> bool:
    """True when the job Hydra is starting has a ``resume=`` (its task overrides say so)."""
    try:
        task = [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # no Hydra job: nothing to tell
        return True
    value = override_value(task, "resume")
    return value not in (None, "", "null")


class RunLogFile(logging.FileHandler):
    """train.log: on a full disk its failed writes stay quiet (the run itself says it in one line), instead of
    logging's '--- Logging error ---' traceback on stderr for every later message."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
            return
        super().handleError(record)


def refuse_if_busy(run_dir: Path | None) -> None:
    """If another process holds the lock of the existing ``run_dir``: RunDirBusy now, before the slow imports.

    A probe, not the lock: it writes nothing (a command refused later, e.g. for a damaged checkpoint, leaves the
    directory as it was). Taking the real lock later (:func:`hold`) settles any race: at most one process gets it.
    """
    if run_dir is None or follower_rank():
        return
    run_dir = Path(os.path.abspath(run_dir))
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file (a new or pre-lock directory), or unreadable: hold() decides later
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails only while someone holds the exclusive lock
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise RunDirBusy(_busy_message(run_dir, _read_pid(fd))) from None
    except OSError:  # no locks on this filesystem: hold() warns
        pass
    finally:
        os.close(fd)


def follower_rank() -> bool:
    """True in a torchrun worker of rank > 0 (as ganbench.distributed.rank decides, without importing torch)."""
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))
    return launched and os.environ["RANK"] != "0"


# ---------------------------------------------------------------------------------------------------- what it holds


def records(path: Path) -> list[str]:
    """What of a run or a sweep ``path`` holds, sorted: run records (:data:`RUN_RECORDS`, event files), a sweep's
    files (:data:`SWEEP_RECORDS`) and job directories that hold run records; [] when it holds none."""
    try:
        entries = list(Path(path).iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        if p.name in RUN_RECORDS or p.name in SWEEP_RECORDS or p.name.startswith(EVENTS):
            found.append(p.name + ("/" if p.is_dir() else ""))
        elif p.is_dir() and any(q.name in RUN_RECORDS or q.name.startswith(EVENTS) for q in _entries(p)):
            found.append(p.name + "/")
    return sorted(found)


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_fresh(run_dir: Path, sweep: bool = False) -> None:
    """A fresh run (``sweep``: a fresh sweep) may write into ``run_dir`` only if it holds no run's or sweep's
    records; :class:`RunDirTaken` otherwise, naming the two ways on."""
    run_dir = Path(os.path.abspath(run_dir))
    found = records(run_dir)
    if not found:
        return
    if sweep:
        raise RunDirTaken(f"hydra.sweep.dir={run_dir} holds earlier runs ({_listing(found)}); a new sweep does not "
                          f"overwrite them: continue its jobs with the same command and resume=auto, or give this "
                          f"sweep another hydra.sweep.dir.")
    if any((run_dir / "checkpoints" / n).is_file() for n in ("last.pt", "prev.pt")):
        ways = f"continue it with resume={run_dir}, or give this run another hydra.run.dir"
    else:
        ways = "it has no checkpoint to continue from: give this run another hydra.run.dir"
    raise RunDirTaken(f"{run_dir} holds another run ({_listing(found)}); a new run does not overwrite it: {ways}.")


def _check_output_dir(key: str, value: str | None) -> None:
    """The run/sweep directory must be named when given and creatable: its nearest existing ancestor is a writable
    directory."""
    if value is not None and not value.strip():
        raise GanbenchError(f"{key}= is empty: it would write the run into the current directory; give a directory, "
                            f"e.g. {key}=outputs/my_run.")
    path = Path(value if value else "outputs").absolute()
    while not path.exists():
        path = path.parent
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise GanbenchError(f"cannot write the run output under {path} (not a writable directory); "
                            f"set hydra.run.dir to a writable place.")


# ---------------------------------------------------------------------------------------------------- the command line


def override_value(overrides: list[str], key: str) -> str | None:
    """The value the last ``key=`` override gives, as Hydra reads it (quotes removed); None when there is none.

    A value Hydra's lexer refuses unquoted (a path with non-ASCII characters) is taken as written, so ``resume=`` and
    ``hydra.run.dir=`` accept what a shell hands over; :func:`quote` gives it to Hydra quoted.
    """
    raw = next((o.split("=", 1)[1] for o in reversed(overrides) if o.split("=", 1)[0].lstrip("+~") == key
                and "=" in o), None)
    if raw is None:
        return None
    try:
        parsed = OverridesParser.create().parse_overrides([f"{key}={raw}"])[0]
    except Exception:
        return raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
    if parsed.is_sweep_override():
        return raw
    value = parsed.value()
    return None if value is None else str(value)


def quote(value: str) -> str:
    """``value`` as a Hydra override value: quoted (and escaped) unless Hydra reads it as it is."""
    if re.fullmatch(r"[A-Za-z0-9_./:@+-]+", value) and value not in ("null", "true", "false"):
        return value
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def _set(overrides: list[str], key: str, value: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key] + [f"{key}={quote(value)}"]


# Hydra flags that print or inspect instead of running: no run directory is written.
INFO_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--resolve")


def prepare_train(argv: list[str]) -> list[str]:
    """`ganbench train ARGV`: check the run directory part of the command line, before Hydra writes anything, and
    return the argv to hand to Hydra (``resume=<run>`` expanded into that run's overrides and directory).

    Refused with one line (exit 2): a busy directory, a fresh run or sweep into another's directory, an empty or
    unwritable ``hydra.run.dir`` / ``hydra.sweep.dir``, ``resume=<run>`` in a sweep, a checkpoint that does not match
    the command line. :class:`NothingToDo` when the resumed run is already at its last step.
    """
    flags, overrides = config._split(argv)
    if any(f in ("-h", "--help", "--hydra-help", "--version") for f in flags):
        return config.prepare_argv(argv)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    checks = not any(f in INFO_FLAGS for f in flags) and not follower_rank()  # torchrun: rank 0 checks
    run_dir_arg = override_value(overrides, "hydra.run.dir")
    sweep_dir_arg = override_value(overrides, "hydra.sweep.dir")
    _check_output_dir("hydra.sweep.dir" if multirun else "hydra.run.dir", sweep_dir_arg if multirun else run_dir_arg)
    if run_dir_arg is not None:
        overrides = _set(overrides, "hydra.run.dir", run_dir_arg)
    if sweep_dir_arg is not None:
        overrides = _set(overrides, "hydra.sweep.dir", sweep_dir_arg)
    resume, ckpt = override_value(overrides, "resume"), None
    if resume is not None and resume not in ("", "null", "auto"):
        if multirun:
            raise GanbenchError(f"resume={resume} continues one run and cannot be swept (-m): drop -m to continue "
                                f"it with its own settings, or continue a sweep's jobs with resume=auto and its "
                                f"hydra.sweep.dir.")
        overrides, ckpt = _resume_overrides(_set(overrides, "resume", resume), resume, run_dir_arg, checks)
    elif checks and multirun and sweep_dir_arg and resume != "auto":
        check_fresh(Path(sweep_dir_arg), sweep=True)
    elif checks and not multirun and run_dir_arg:
        refuse_if_busy(Path(run_dir_arg))
        if resume != "auto":
            check_fresh(Path(run_dir_arg))
    argv = config.prepare_argv(flags + overrides)
    if checks and not multirun and (ckpt is not None or (resume == "auto" and run_dir_arg)):
        _check_resume(overrides, ckpt, Path(run_dir_arg) if ckpt is None else None)
    return argv


def _resume_overrides(overrides: list[str], resume: str, run_dir_arg: str | None,
                      checks: bool = True) -> tuple[list[str], Path]:
    """For ``resume=<run dir|checkpoint>``: that run's overrides first, then the given ones, and its directory as
    the output dir (a new ``hydra.run.dir`` must hold no other run)."""
    ckpt = find_checkpoint(resume)
    if ckpt is None:
        raise GanbenchError(f"resume={resume} holds no checkpoint (looked for checkpoints/last.pt and prev.pt).")
    run_dir = run_dir_of(ckpt)
    if checks:
        refuse_if_busy(run_dir)
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    saved = []
    if saved_file.is_file():
        from ganbench import checkpoint  # torch: a checkpoint is read next anyway

        saved = [str(o) for o in checkpoint.read_yaml(saved_file, "the run's overrides", ListConfig)]
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    keep = [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in given | {"resume"}
            and not o.startswith("hydra")]
    if run_dir_arg is None:
        return keep + overrides + [f"hydra.run.dir={quote(str(run_dir))}", "hydra.output_subdir=null"], ckpt
    if Path(run_dir_arg).absolute() != run_dir.absolute() and checks:  # continued into a new directory
        refuse_if_busy(Path(run_dir_arg))
        check_fresh(Path(run_dir_arg))
    elif Path(run_dir_arg).absolute() == run_dir.absolute():
        overrides = overrides + ["hydra.output_subdir=null"]  # keep the run's own .hydra/ as it was
    return keep + overrides, ckpt


def _check_resume(overrides: list[str], ckpt: Path | None, auto_dir: Path | None) -> None:
    """Before Hydra starts: refuse a checkpoint made with other settings; :class:`NothingToDo` when it is at the
    run's last step. ``auto_dir``: ``resume=auto`` with a named directory."""
    cfg = config.compose([o for o in overrides if not o.lstrip("+~").startswith("hydra.")])
    done = nothing_to_do(cfg, auto_dir, ckpt)
    if done:
        raise NothingToDo(done)


def nothing_to_do(cfg: DictConfig, run_dir: Path | None, ckpt: Path | None = None) -> str | None:
    """For a resuming run (``cfg.resume``): why there is nothing to do (its checkpoint is at ``cfg.steps`` or past
    it), or None. A checkpoint made with other settings is refused here (GanbenchError), as when it is restored."""
    if not cfg.get("resume"):
        return None
    if cfg.resume == "auto":
        found = load_latest(run_dir, quiet=True) if run_dir is not None else None
        if found is None:
            return None
        state, ckpt = found
    else:
        from ganbench import checkpoint  # torch

        ckpt = ckpt or find_checkpoint(cfg.resume)
        if ckpt is None:
            return None  # the run says it holds none
        state = checkpoint.load(ckpt)
    check_resume_identity(state.get("identity", ""), identity(cfg), ckpt)
    step = int(state.get("step", 0))
    if step < cfg.steps:
        return None
    return (f"nothing to do: {ckpt} is at step {step} and steps={cfg.steps}, so the run is complete and its files "
            f"stay as they are; give steps=N (N > {step}) to train it further.")


# ---------------------------------------------------------------------------------------------------- checkpoints


def find_checkpoint(resume: str | os.PathLike) -> Path | None:
    """Resolve ``resume`` (a run dir, a checkpoints dir or a file) to a checkpoint file; None if a dir holds none."""
    path = Path(resume)
    if path.is_file():
        return path
    if not path.exists():
        raise GanbenchError(f"resume={resume} does not exist; give a run directory or a checkpoint file "
                            f"(quote a path with spaces or non-ASCII characters: resume='...').")
    if not path.is_dir():
        raise GanbenchError(f"resume={resume} is neither a directory nor a checkpoint file.")
    for candidate in (path / "checkpoints" / "last.pt", path / "last.pt",
                      path / "checkpoints" / "prev.pt", path / "prev.pt"):
        if candidate.is_file():
            return candidate
    return None


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_latest(run_dir: Path, map_location="cpu", quiet: bool = False) -> tuple[dict, Path] | None:
    """The newest loadable checkpoint of ``run_dir`` as (state, path), for ``resume=auto``; None when it has none.

    A damaged ``last.pt`` with a loadable ``prev.pt`` is a warning naming both files (unless ``quiet``), and prev.pt
    is used; both damaged is one error that names them and what is intact (best.pt). A file that would run code, or
    that is not a ganbench checkpoint, is an error, never skipped: not damage but a wrong file.
    """
    from ganbench import checkpoint  # torch

    ckpt_dir = Path(run_dir) / "checkpoints"
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    if not last.is_file() and not prev.is_file():
        return None
    if not last.is_file():
        return checkpoint.load(prev, map_location), prev
    try:
        return checkpoint.load(last, map_location), last
    except checkpoint.DamagedCheckpoint as e:
        if not prev.is_file():
            raise
        why = e.why
    try:
        state = checkpoint.load(prev, map_location)
    except checkpoint.DamagedCheckpoint as e:
        raise GanbenchError(f"both checkpoints are damaged: {last} {why}, and {prev} {e.why}; "
                            f"{checkpoint.intact_best_hint(ckpt_dir)}.") from None
    if not quiet:
        log.warning(f"checkpoint {last} {why}; resuming from {prev} (step {state.get('step')}), the one before it "
                    f"(the next save replaces {last.name})")
    return state, prev


def describe_last_good(last_good: tuple[Path, int] | None) -> str:
    """'the last good checkpoint (step N) is PATH', or that none was written; ``last_good`` is (path, step)."""
    if last_good is None:
        return "no checkpoint had been written yet"
    path, step = last_good
    return f"the last good checkpoint (step {step}) is {path}"


def after_write_failure(last_good: tuple[Path, int] | None, run_dir: Path) -> str:
    """What a run that could not write (a full disk) keeps, and what to do once there is space again."""
    if last_good is None:
        return f"{describe_last_good(None)}; free some space and start the run again"
    return f"{describe_last_good(last_good)}; free some space, then continue with: ganbench train resume={run_dir}"


def last_good_on_disk(run_dir: Path) -> tuple[Path, int] | None:
    """(path, step) of ``run_dir``'s newest loadable checkpoint, or None (for an error path that only has the disk)."""
    try:
        found = load_latest(run_dir, quiet=True)
    except GanbenchError:
        return None
    return None if found is None else (found[1], int(found[0].get("step", 0)))


# ---------------------------------------------------------------------------------------------------- identity


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def identity(cfg: DictConfig) -> str:
    """The settings a resumed run must share with its checkpoint, as a JSON string (safe for weights_only)."""
    keys = ("dataset", "model", "loss", "constraint", "n_dis", "batch_size", "g_batch_size", "ema_decay", "seed")
    data = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    data["optim"] = {"g": cfg.optim.g._target_, "d": cfg.optim.d._target_}
    return json.dumps(_flatten(data), sort_keys=True)


# Identity keys added after checkpoints were first written, with the value that older checkpoints ran with: a
# checkpoint without the key resumes into a run that has this value (and is refused for any other).
ADDED_KEYS = {"model.generator.init": "default", "model.discriminator.init": "default",
              "model.discriminator.batchnorm": False}


def check_resume_identity(saved: str, now: str, path: Path) -> None:
    saved_d, now_d = json.loads(saved or "{}"), json.loads(now)
    for key, value in ADDED_KEYS.items():
        if saved_d and key in now_d and key not in saved_d:
            saved_d[key] = value
    for key in sorted(set(saved_d) | set(now_d)):
        if key.startswith("dataset.root"):
            continue  # the same data may move
        if saved_d.get(key) != now_d.get(key):
            raise GanbenchError(f"checkpoint {path} was made with {key}={saved_d.get(key)!r} but this run has "
                                f"{key}={now_d.get(key)!r}; resume with the same settings or start a new run.")


# ---------------------------------------------------------------------------------------------------- metrics.json


class RecordProblem(GanbenchError):
    """metrics.json is ``missing`` or ``unreadable`` (``status``); the message says why."""

    def __init__(self, path: Path, status: str, why: str):
        self.path, self.status, self.why = Path(path), status, why
        super().__init__(f"{path} {why}")

    def __reduce__(self):
        return type(self), (self.path, self.status, self.why)


# The keys of a record and the types they must have when present.
_RECORD_TYPES = {"step": (int, type(None)), "status": (str,), "metrics": (dict,), "protocol": (dict,),
                 "history": (list,), "config": (dict,), "wall_time_s": (int, float, type(None)),
                 "error": (str, type(None))}


def _json_type(value) -> str:
    return {str: "string", list: "array", dict: "object", bool: "boolean", type(None): "null"}.get(type(value),
                                                                                               "number")


def read_record(run_dir: Path) -> dict:
    """The run's metrics.json, checked in shape; :class:`RecordProblem` when it is missing or unreadable."""
    path = Path(run_dir) / METRICS
    if not os.path.lexists(path):
        raise RecordProblem(path, "missing", "does not exist")
    try:
        text = path.read_text()
    except IsADirectoryError:
        raise RecordProblem(path, "unreadable", "cannot be read: it is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecordProblem(path, "unreadable", f"cannot be read ({getattr(e, 'strerror', None) or e})") from None
    try:
        record = json.loads(text)
    except ValueError as e:
        why = "it is empty" if not text.strip() else f"not valid JSON ({str(e).splitlines()[0][:80]})"
        raise RecordProblem(path, "unreadable", f"cannot be read: {why}") from None
    if not isinstance(record, dict):
        raise RecordProblem(path, "unreadable", f"cannot be read: a JSON {_json_type(record)}, not a record")
    for key, types in _RECORD_TYPES.items():
        if key in record and (not isinstance(record[key], types) or isinstance(record[key], bool)):
            raise RecordProblem(path, "unreadable", f"cannot be read: its '{key}' is malformed (a JSON "
                                                    f"{_json_type(record[key])})")
    return record


def write_record(run_dir: Path, record: dict) -> None:
    """Write ``record`` as the run's metrics.json, atomically (the one writer of that file); a failed write raises
    :class:`ganbench.checkpoint.WriteFailed`."""
    from ganbench import checkpoint  # torch: loaded by every caller already

    text = json.dumps(record, indent=2, default=str).encode()
    checkpoint.atomic_write_bytes(Path(run_dir) / METRICS, lambda f: f.write(text))
