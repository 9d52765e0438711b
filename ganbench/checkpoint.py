"""Checkpoints and every other file ganbench writes: atomic writes, the previous checkpoint kept, safe loading.

Layout of a run directory's ``checkpoints/``: ``last.pt`` (newest) and ``prev.pt`` (the one before). Every file
(checkpoints, metrics.json, caches) is written the same way: serialised in memory, written to a temporary file in the
same folder, fsync'ed, then renamed into place; for a checkpoint the old ``last.pt`` is first renamed to ``prev.pt``.
A crash at any moment leaves at least one complete checkpoint, and a failed write (a full disk) is one
:class:`WriteFailed` error naming the file, with its temporary file removed and every earlier file as it was.

Loading uses ``torch.load(weights_only=True)``, so a pickle that would run code is refused. Each way a file can be bad
has its own message: missing, unreadable, truncated or corrupt, code-carrying, not a ganbench checkpoint; a damaged
``last.pt`` or ``prev.pt`` names the intact checkpoint beside it (prev.pt, else best.pt). Which checkpoint a run
continues from is :mod:`ganbench.rundir`'s; :func:`load_cache` is the one way to read a cache file (a damaged one is
removed and rebuilt, never trusted).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganbench.errors import GanbenchError

log = logging.getLogger("ganbench")

FORMAT = "ganbench-checkpoint-1"

# What a user is told for the write errors that are not a bug: the disk, the quota or the storage failed.
WRITE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error (the disk or network filesystem failed)",
}

# Temporary files of the writers below: ``.<name>.tmp<pid>`` (see _temp_path).
_TEMP = re.compile(r"^\..+\.tmp(\d+)$")


class DamagedCheckpoint(GanbenchError):
    """A checkpoint file that is missing, unreadable, truncated or corrupt (``why`` says which)."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why
        super().__init__(f"checkpoint {path} {why}; {_fallback_hint(path)}.")

    def __reduce__(self):  # picklable (a launcher may carry it to another process)
        return type(self), (self.path, self.why)


class WriteFailed(GanbenchError, OSError):
    """Writing ``path`` failed (disk full, quota, I/O error); its temp file is removed, the old ``path`` unchanged.

    A GanbenchError (one line for the user) and an OSError (callers that shrug off a failed cache write still can).
    ``context`` is appended by whoever knows more, e.g. the loop names the last good checkpoint.
    """

    def __init__(self, path: Path, error: OSError, context: str = ""):
        self.path, self.error, self.context = Path(path), error, context
        self.reason = WRITE_REASONS.get(error.errno) or error.strerror or str(error)
        super().__init__(f"cannot write {self.path}: {self.reason}" + (f"; {context}" if context else ""))
        self.errno, self.strerror, self.filename = error.errno, self.reason, str(self.path)

    def with_context(self, context: str) -> WriteFailed:
        return WriteFailed(self.path, self.error, context)

    def __reduce__(self):  # picklable (a launcher may carry it to another process)
        return type(self), (self.path, self.error, self.context)

    def __str__(self) -> str:
        return self.args[0]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(f, data) -> None:
    """The one place where file contents reach the disk (tests replace it to fail or die mid-write)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _commit(path: Path, data, before_replace: Callable[[], None] | None = None) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, run ``before_replace``, rename it over ``path``."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            _write_synced(f, data)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        raise WriteFailed(path, e) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, write: Callable) -> None:
    """Write ``path`` through ``write(file)``, atomically; a failed write raises :class:`WriteFailed`."""
    buffer = io.BytesIO()
    write(buffer)
    _commit(Path(path), buffer.getbuffer())


def save_torch(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path``, atomically (serialised in memory first, so a full disk is an OSError that
    names the file, not a torch zip-writer error); creates the parent folder."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(path, e) from None
    _commit(path, buffer.getbuffer())


def save(state: dict, ckpt_dir: Path) -> Path:
    """Save ``state`` as ``ckpt_dir/last.pt``; the former ``last.pt`` becomes ``prev.pt`` if it is a complete file.

    A damaged ``last.pt`` (e.g. the one ``resume=auto`` skipped) is overwritten instead of rotated, so it can never
    replace a good ``prev.pt``.
    """
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(ckpt_dir / "last.pt", e) from None
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)

    def rotate():  # between this rename and the next one, prev.pt is the complete newest checkpoint
        if last.exists() and zipfile.is_zipfile(last):
            os.replace(last, prev)

    _commit(last, buffer.getbuffer(), before_replace=rotate)
    return last


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (``best.pt`` from ``last.pt``)."""
    try:
        data = src.read_bytes()
    except OSError as e:
        raise WriteFailed(dst, e) from None
    _commit(dst, data)


def remove_temps(run_dir: Path) -> list[Path]:
    """Remove the temp files that writers killed mid-write (kill -9, power loss) left in ``run_dir`` and its
    ``checkpoints/``; call it only while holding the run directory's lock (then nobody else can be writing)."""
    removed = []
    entries = []
    for folder in (run_dir, run_dir / "checkpoints"):
        try:
            entries += list(folder.iterdir())
        except OSError:
            pass
    for p in entries:
        if _TEMP.match(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _fallback_hint(path: Path) -> str:
    """What to do instead of loading ``path``: the intact checkpoint beside it (prev.pt for last.pt, else best.pt),
    else a new run."""
    prev = path.with_name("prev.pt")
    if path.name == "last.pt" and _intact_step(prev) is not None:
        return (f"{prev} holds the checkpoint before it (resume=auto falls back to it; eval and sample take "
                f"--checkpoint {prev})")
    if path.name == "last.pt" and prev.is_file():
        return f"{prev} is damaged too; {intact_best_hint(path.parent)}"
    if path.name in ("last.pt", "prev.pt"):
        return intact_best_hint(path.parent)
    return "start a new run (or resume from another checkpoint file)"


def intact_best_hint(ckpt_dir: Path) -> str:
    """What is left when last.pt and prev.pt are damaged: best.pt when it loads, else a new run."""
    best = Path(ckpt_dir) / "best.pt"
    step = _intact_step(best)
    if step is None:
        return "no intact checkpoint is left: start a new run (or resume from another checkpoint file)"
    return (f"{best} (step {step}, the best evaluation) is intact: continue from it with resume={best} (eval and "
            f"sample take --checkpoint best), or start a new run")


def _intact_step(path: Path) -> int | None:
    """The step of the ganbench checkpoint ``path`` if it loads, else None."""
    if not path.is_file() or problem(path) is not None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- any damage (torch raises many types): not intact
        return None
    return int(state.get("step", 0)) if isinstance(state, dict) and state.get("format") == FORMAT else None


def problem(path: Path) -> str | None:
    """Why ``path`` is not a readable checkpoint archive (missing, unreadable, truncated); None if it may be one."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        return "does not exist"
    except IsADirectoryError:
        return "is a directory, not a checkpoint file"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not head:
        return "is empty (0 bytes; a write that never finished)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose directory is at the end
        if head.startswith(b"PK"):
            return "is corrupt or truncated (a zip archive without its end; an interrupted write or copy)"
        return "is corrupt or truncated (not a torch.save archive)"
    return None


def load(path: Path, map_location="cpu") -> dict:
    """Load a ganbench checkpoint safely; a missing, unreadable, damaged, foreign or code-carrying file is a
    GanbenchError saying which of these it is."""
    path = Path(path)
    why = problem(path)
    if why is not None:
        raise DamagedCheckpoint(path, why)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise GanbenchError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
            f"(loaded with weights_only=True, so no code in it ran)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        detail = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise DamagedCheckpoint(path, f"is corrupt or truncated ({detail})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GanbenchError(f"{path} is not a ganbench checkpoint (no '{FORMAT}' format tag).")
    return state


def load_cache(path: Path, what: str, check: Callable[[object], bool] = lambda _: True,
               map_location="cpu"):
    """A cache file's contents (``torch.load(weights_only=True)``), or None when it is missing or damaged.

    A damaged file (unreadable, truncated, code-carrying, or failing ``check``) is logged as one warning naming
    ``what``, removed, and None is returned, so the caller rebuilds it: a cache is never trusted and never a traceback.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        hit = torch.load(path, map_location=map_location, weights_only=True)
        if check(hit):
            return hit
        reason = "made by another version or setting"
    except pickle.UnpicklingError:
        reason = "it holds objects other than tensors and plain data; refused"
    except Exception as e:  # noqa: BLE001 -- any damage at all (torch raises many types): the cache is rebuilt
        reason = (problem(path) or (str(e).splitlines()[0][:120] if str(e) else type(e).__name__))
    log.warning(f"{what} cache {path} is unusable ({reason}); rebuilding it")
    try:
        path.unlink()
    except OSError:
        pass
    return None


def read_yaml(path: Path, what: str, kind: type = DictConfig) -> DictConfig | ListConfig:
    """A run's ``.hydra/*.yaml`` (``kind``: DictConfig or ListConfig); a missing, unreadable, damaged or empty file
    is one GanbenchError naming ``what`` and the file."""
    path = Path(path)
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise GanbenchError(f"{what} {path} does not exist.") from None
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as e:
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise GanbenchError(f"{what} {path} is damaged and cannot be read ({detail}); restore it from a copy of "
                            f"the run, or start a new run.") from None
    if not isinstance(loaded, kind) or (kind is DictConfig and not loaded):
        raise GanbenchError(f"{what} {path} is damaged (empty, or not a YAML {kind.__name__[:-6].lower()}); "
                            f"restore it from a copy of the run, or start a new run.")
    return loaded
