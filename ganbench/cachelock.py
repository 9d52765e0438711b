"""One builder per cache file: processes that need the same cache entry at once wait for the first one's.

Runs started together (a sweep, two terminals) need the same fd_classifier feature net, reference statistics or
decoded folder. Without coordination each would build its own copy; with :func:`load_or_build` the first takes an
exclusive lock on ``<cache file>.lock`` and builds, the others block on the lock, then load what it wrote.

The lock is an ``fcntl.flock`` on an open file: the kernel drops it when its holder exits, however it exits
(``kill -9`` too), so a lock file left behind by a dead process never blocks anyone. Where ``flock`` is not
available (no ``fcntl``, or a filesystem that refuses it) every process builds for itself, as without the lock.
Torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

log = logging.getLogger("ganbench")

T = TypeVar("T")


def load_or_build(path: Path, load: Callable[[], T | None], build: Callable[[], T], what: str) -> T:
    """``load()`` if it finds the cache entry at ``path``; else ``build()`` (which writes it) under the lock.

    A process that finds the lock taken waits for it, then tries ``load()`` again: the holder has usually written
    the entry by then. ``what`` names the entry in the one log line said while waiting.
    """
    hit = load()
    if hit is not None:
        return hit
    with exclusive(path, what):
        hit = load()
        return hit if hit is not None else build()


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold ``flock(LOCK_EX)`` on ``<path>.lock`` for the block; waits (one log line) while another process holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # an unwritable cache folder: the build's own write reports that
        yield
        return
    try:
        if fcntl is not None and not _try_lock(fd):
            log.info(f"waiting for another process that is building the {what} ({path})")
            _lock(fd)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def _try_lock(fd: int) -> bool:
    """True when the lock is now held (or cannot be used here); False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a filesystem without flock: go on unlocked
        return True
    return True


def _lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX)
