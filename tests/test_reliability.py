"""Runs survive kill -9, SIGTERM and requeues: checkpoints stay loadable, resume ends where an unbroken run ends.

The moments are made with test_faults' DRIVER (a child whose disk writer is hooked), not with sleeps: a kill in the
middle of a write (half its bytes on disk) or just before one (the child waits on a pipe, the test kills it).
"""

from __future__ import annotations

import os
import random
import select
import signal

import torch
from conftest import read_metrics, run_cli, tiny_overrides
from test_faults import drive, finish
from test_train import scalars

from ganbench import checkpoint, rundir

# A toy run long enough to be killed mid-way: checkpoints every 5 steps, metrics every 50.
OVER = tiny_overrides("mlp", dataset="grid25", steps=300, log_every=1, ckpt_every=5, eval_every=50, sample_every=100)


def _held(cwd, spec: dict, args: list[str]):
    """Start the driver with a 'hold' fault; return (process, True once it waits at the write, False if it ended)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    proc = drive(cwd, {**spec, "action": "hold", "ready_fd": ready_w, "go_fd": go_r}, args, pass_fds=(ready_w, go_r))
    os.close(ready_w)
    os.close(go_r)
    readable, _, _ = select.select([ready_r], [], [], 300)
    waiting = bool(readable) and os.read(ready_r, 16) == b"ready\n"  # EOF instead: the run ended first
    os.close(ready_r)
    proc.go_w = go_w
    return proc, waiting


def test_kill9_five_times_then_resume_matches_an_unbroken_run(tmp_cwd):
    assert run_cli(["train", *OVER, "hydra.run.dir=outputs/straight"], tmp_cwd).returncode == 0
    run_dir = tmp_cwd / "outputs" / "killed"
    args = ["train", *OVER, "hydra.run.dir=outputs/killed", "resume=auto"]
    rng = random.Random(0)
    kills = 0
    for _ in range(5):
        # A checkpoint write (every 5 steps) or metrics.json's (every 50): each attempt advances the run a little.
        spec = rng.choice([{"file": "last.pt", "at": rng.randint(1, 8)}, {"file": "metrics.json", "at": 1}])
        if rng.random() < 0.5:  # in the middle of the write
            proc = drive(tmp_cwd, {**spec, "action": "kill"}, args)
        else:  # just before the write (between two steps' duties)
            proc, waiting = _held(tmp_cwd, spec, args)
            if waiting:
                proc.send_signal(signal.SIGKILL)
            os.close(proc.go_w)
        result = finish(proc, timeout=300)
        kills += result.returncode == -9
        assert result.returncode in (0, -9), result.stderr
        # Whatever the moment of the kill, a complete checkpoint remains.
        assert checkpoint.load(rundir.find_checkpoint(run_dir))["step"] > 0
    assert kills == 5  # every fault lands before the run's end
    proc = run_cli(args, tmp_cwd)
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
    proc, waiting = _held(tmp_cwd, {"file": "last.pt", "at": 1}, ["train", *over, "hydra.run.dir=outputs/run"])
    assert waiting, finish(proc).stderr
    proc.send_signal(signal.SIGTERM)  # arrives while the first checkpoint is being written; the step then ends
    os.write(proc.go_w, b"x")
    os.close(proc.go_w)
    result = finish(proc, timeout=120)
    assert result.returncode == 143, result.stderr
    assert "stopped by SIGTERM" in result.stdout and "Traceback" not in result.stderr
    record = read_metrics(tmp_cwd / "outputs" / "run")
    state = checkpoint.load(tmp_cwd / "outputs" / "run" / "checkpoints" / "last.pt")
    assert record["status"] == "interrupted" and record["step"] == state["step"] == 5


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_cwd):
    proc = run_cli(["train", *OVER, "steps=3", "hydra.run.dir=outputs/run", "resume=auto"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(tmp_cwd / "outputs" / "run")["step"] == 3
    # Run again with resume=auto and more steps: it continues from step 3.
    proc = run_cli(["train", *OVER, "steps=5", "hydra.run.dir=outputs/run", "resume=auto"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout
    assert [s for s, _ in scalars(tmp_cwd / "outputs" / "run")["loss/d"]] == [1, 2, 3, 4, 5]
