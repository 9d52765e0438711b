"""Checkpoints: atomic writes, the previous one kept, safe loading.

Layout of a run directory's ``checkpoints/``: ``last.pt`` (newest) and ``prev.pt`` (the one before). A write goes to a
temporary file in the same folder, is fsync'ed, then renamed over ``last.pt`` after the old ``last.pt`` was renamed to
``prev.pt``; a crash at any moment leaves at least one complete checkpoint. Loading uses
``torch.load(weights_only=True)``, so a pickle that would run code is refused.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from ganbench.errors import GanbenchError

FORMAT = "ganbench-checkpoint-1"


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


def atomic_write_bytes(path: Path, write) -> None:
    """Write ``path`` through ``write(file)`` into a temp file, fsync it, and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def save(state: dict, ckpt_dir: Path) -> Path:
    """Save ``state`` as ``ckpt_dir/last.pt``; the former ``last.pt`` becomes ``prev.pt``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    tmp = ckpt_dir / f".last.pt.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if last.exists():
            os.replace(last, prev)  # between these two renames prev.pt is the complete newest one
        os.replace(tmp, last)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(ckpt_dir)
    return last


def find(resume: str | os.PathLike) -> Path | None:
    """Resolve ``resume`` (a run dir, a checkpoints dir or a file) to a checkpoint file; None if a dir holds none."""
    path = Path(resume)
    if path.is_file():
        return path
    if not path.exists():
        raise GanbenchError(f"resume={resume} does not exist; give a run directory or a checkpoint file.")
    for candidate in (path / "checkpoints" / "last.pt", path / "last.pt",
                      path / "checkpoints" / "prev.pt", path / "prev.pt"):
        if candidate.is_file():
            return candidate
    return None


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/last.pt`` -> ``<run>``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load(path: Path, map_location="cpu") -> dict:
    """Load a ganbench checkpoint safely; a corrupt, foreign or code-carrying file is a GanbenchError."""
    corrupt = GanbenchError(f"checkpoint {path} is corrupt or truncated and cannot be read; "
                            f"use checkpoints/prev.pt or start a new run.")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged or foreign
        raise corrupt
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise GanbenchError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data "
            f"(loaded with weights_only=True, so no code in it ran)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError):
        raise corrupt from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GanbenchError(f"{path} is not a ganbench checkpoint (no '{FORMAT}' format tag).")
    return state
