"""One builder per cache file: a second process waits for the first one's entry; a dead holder blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganbench import cachelock

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _read_until(proc: subprocess.Popen, needle: str) -> list[str]:
    """The child's output lines up to and including the first that holds ``needle`` (all of it if it never does)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if needle in line:
            break
    return lines


def _folder(root: Path, n: int = 160) -> Path:
    """A two-class image folder of ``n`` 16×16 greyscale PNGs (dark and bright squares)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        label = i % 2
        d = root / f"class{label}"
        d.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 100, (16, 16)) + 150 * label
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(d / f"{i}.png")
    return root


def test_a_waiting_process_loads_the_entry_the_holder_wrote(tmp_path):
    path = tmp_path / "entry.txt"
    code = ("import logging, sys; from pathlib import Path; from ganbench import cachelock\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
            f"p = Path({str(path)!r})\n"
            "load = lambda: p.read_text() if p.exists() else None\n"
            "def build():\n"
            "    print('BUILT', flush=True); p.write_text('child'); return 'child'\n"
            "print('GOT', cachelock.load_or_build(p, load, build, 'test entry'), flush=True)\n")
    with cachelock.exclusive(path, "test entry"):
        child = _child(code, {})
        seen = _read_until(child, "waiting for another process")
        assert any("waiting for another process that is building the test entry" in line for line in seen), seen
        path.write_text("holder")  # the holder's build, while the child waits on the lock
    rest = child.communicate(timeout=60)[0]
    assert child.returncode == 0, rest
    assert "GOT holder" in rest and "BUILT" not in rest
    assert path.read_text() == "holder"


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    path = tmp_path / "entry.txt"
    code = ("import sys; from pathlib import Path; from ganbench import cachelock\n"
            f"with cachelock.exclusive(Path({str(path)!r}), 'test entry'):\n"
            "    print('LOCKED', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "LOCKED"
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / "entry.txt.lock").exists()  # the file stays; the kernel dropped the lock with its holder

    result = []
    worker = threading.Thread(target=lambda: result.append(
        cachelock.load_or_build(path, lambda: None, lambda: "built", "test entry")), daemon=True)
    worker.start()
    worker.join(timeout=60)  # a hang guard, not a timing: it returns at once unless the dead lock blocks
    assert result == ["built"]


def test_a_build_that_fails_releases_the_lock(tmp_path):
    path = tmp_path / "entry.txt"

    def fail():
        raise RuntimeError("no space")

    with pytest.raises(RuntimeError, match="no space"):
        cachelock.load_or_build(path, lambda: None, fail, "test entry")
    assert cachelock.load_or_build(path, lambda: None, lambda: "second", "test entry") == "second"


def test_two_runs_on_a_new_folder_train_its_feature_net_once(tmp_path):
    """The second process waits for the feature net the first is training, then loads it: one training in all."""
    from ganbench.data import folder
    from ganbench.metrics import classifier

    root = _folder(tmp_path / "digits")
    env = {"GANBENCH_CACHE": str(tmp_path / "cache")}
    os.environ["GANBENCH_CACHE"] = env["GANBENCH_CACHE"]
    try:
        dataset = folder(str(root), resolution=16, channels=1)
        path = classifier.cache_path(dataset, 0)
        code = ("import logging, sys\n"
                "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
                "from ganbench.data import folder; from ganbench.metrics.classifier import feature_net\n"
                f"net = feature_net(folder({str(root)!r}, resolution=16, channels=1), 0)\n"
                "print('SHA', net.sha256, flush=True)\n")
        with cachelock.exclusive(path, "fd_classifier feature net"):
            child = _child(code, env)
            seen = _read_until(child, "waiting for another process")
            assert any("waiting for another process" in line for line in seen), seen
            ours = classifier._train_and_cache(dataset, 0, None, path, classifier.spec_of(dataset))
        out = "".join(seen) + child.communicate(timeout=300)[0]
    finally:
        del os.environ["GANBENCH_CACHE"]
    assert child.returncode == 0, out
    assert "training the fd_classifier feature net" not in out
    assert f"SHA {ours.sha256}" in out
