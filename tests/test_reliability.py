"""Runs survive kill -9, SIGTERM and requeues: checkpoints stay loadable, resume ends where an unbroken run ends."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import torch

from conftest import read_metrics, run_cli, tiny_overrides
from ganbench import checkpoint
from test_train import scalars

# A toy run long enough to be killed mid-way: checkpoints every 5 steps, metrics every 10.
OVER = tiny_overrides("mlp", dataset="grid25", steps=300, log_every=1, ckpt_every=5, eval_every=50, sample_every=100)


def _start(cwd, run_dir: str, extra=()):
    cmd = [sys.executable, "-m", "ganbench.cli", "train", *OVER, *extra, f"hydra.run.dir={run_dir}", "resume=auto"]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline and not path.exists() and proc.poll() is None:
        time.sleep(0.05)


def test_kill9_five_times_then_resume_matches_an_unbroken_run(tmp_cwd):
    assert run_cli(["train", *OVER, "hydra.run.dir=outputs/straight"], tmp_cwd).returncode == 0
    run_dir = tmp_cwd / "outputs" / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        proc = _start(tmp_cwd, "outputs/killed")
        _wait_for(run_dir / "checkpoints" / "last.pt", proc)
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the middle: between, during or after a checkpoint write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        # Whatever the moment of the kill, a complete checkpoint remains.
        assert checkpoint.load(checkpoint.find(run_dir))["step"] > 0
    assert kills >= 3  # the run is long enough that most kills land mid-run
    proc = run_cli(["train", *OVER, "hydra.run.dir=outputs/killed", "resume=auto"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr

    a, b = read_metrics(tmp_cwd / "outputs" / "straight"), read_metrics(run_dir)
    assert b["status"] == "completed" and b["step"] == 300
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    wa = checkpoint.load(tmp_cwd / "outputs" / "straight" / "checkpoints" / "last.pt")
    wb = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    for net in ("G", "D"):
        assert all(torch.equal(wa[net][k], wb[net][k]) for k in wa[net]), net
    # Every step logged exactly once, with the same values as the unbroken run.
    sa, sb = scalars(tmp_cwd / "outputs" / "straight"), scalars(run_dir)
    assert [s for s, _ in sb["loss/d"]] == list(range(1, 301))
    assert sa["loss/d"] == sb["loss/d"] and sa["loss/g"] == sb["loss/g"]
    assert len(list((run_dir / "samples").glob("*.png"))) == 3


def test_sigterm_checkpoints_and_exits_cleanly(tmp_cwd):
    over = [o for o in OVER if not o.startswith("steps=")] + ["steps=100000"]
    cmd = [sys.executable, "-m", "ganbench.cli", "train", *over, "hydra.run.dir=outputs/run"]
    proc = subprocess.Popen(cmd, cwd=tmp_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_cwd / "outputs" / "run" / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in out and "Traceback" not in err
    record = read_metrics(tmp_cwd / "outputs" / "run")
    state = checkpoint.load(tmp_cwd / "outputs" / "run" / "checkpoints" / "last.pt")
    assert record["status"] == "interrupted" and record["step"] == state["step"] > 0


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_cwd):
    proc = run_cli(["train", *OVER, "steps=3", "hydra.run.dir=outputs/run", "resume=auto"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(tmp_cwd / "outputs" / "run")["step"] == 3
    # Run again with resume=auto and more steps: it continues from step 3.
    proc = run_cli(["train", *OVER, "steps=5", "hydra.run.dir=outputs/run", "resume=auto"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout
    assert [s for s, _ in scalars(tmp_cwd / "outputs" / "run")["loss/d"]] == [1, 2, 3, 4, 5]
