"""Sweeps through Hydra's joblib launcher (parallel jobs on one machine) and submitit's local executor (the code path
of `hydra/launcher=submitit_slurm`, without Slurm). Each job runs in another process, so these are slow."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import read_metrics, run_cli, tiny_overrides
from test_train import scalars

from ganbench import checkpoint

LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


def statuses(sweep):
    return {p.parent.name: read_metrics(p.parent)["status"] for p in sweep.glob("*/metrics.json")}


@pytest.mark.slow
def test_joblib_runs_the_grid_two_jobs_at_a_time(tmp_cwd):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    proc = run_cli(["train", "-m", *LAUNCHERS["joblib"], *over, "loss=hinge,wgan", "constraint=none,sn",
                    "hydra.sweep.dir=sweep"], tmp_cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert statuses(tmp_cwd / "sweep") == {"0_hinge_none": "completed", "1_hinge_sn": "completed",
                                           "2_wgan_none": "completed", "3_wgan_sn": "completed"}
    assert read_metrics(tmp_cwd / "sweep" / "3_wgan_sn")["config"]["loss"]["_target_"] == "ganbench.losses.WGAN"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_failing_job_does_not_stop_a_launched_sweep(tmp_cwd, launcher):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    # Data at 1e38 overflow D on the first step: that job diverges, the other one runs to the end.
    proc = run_cli(["train", "-m", *LAUNCHERS[launcher], *over, "loss=ganqp", "dataset.spacing=2,1e38",
                    "hydra.sweep.dir=sweep"], tmp_cwd, timeout=600)
    assert "Traceback" not in proc.stderr
    assert statuses(tmp_cwd / "sweep") == {"0_ganqp_sn": "completed", "1_ganqp_sn": "diverged"}
    assert read_metrics(tmp_cwd / "sweep" / "1_ganqp_sn")["error"].startswith(
        "training diverged: a non-finite loss appeared at step 1")
    assert proc.returncode == 1
    assert "1 job(s) of the sweep failed" in proc.stderr and "training diverged" in proc.stderr


@pytest.mark.slow
def test_every_launcher_gives_the_same_table(tmp_cwd):
    """The same 2×2 grid through the basic launcher, joblib (2 jobs) and submitit's local executor: same numbers."""
    from ganbench.report import main as report_main

    grid = [*tiny_overrides("mlp", dataset="grid25", steps=4), "loss=hinge,wgan", "constraint=none,gn"]
    tables = {}
    for name, launcher in {"basic": [], **LAUNCHERS}.items():
        proc = run_cli(["train", "-m", *grid, *launcher, f"hydra.sweep.dir={name}"], tmp_cwd)
        assert proc.returncode == 0, proc.stderr
        assert report_main([str(tmp_cwd / name)]) == 0
        tables[name] = {p.parent.name: (read_metrics(p.parent)["step"], read_metrics(p.parent)["metrics"])
                        for p in (tmp_cwd / name).glob("*/metrics.json")}
        assert (tmp_cwd / name / "report.csv").is_file()
    assert len(tables["basic"]) == 4
    assert tables["joblib"] == tables["basic"] and tables["submitit_local"] == tables["basic"]


def _descendants(pid: int) -> list[int]:
    """The process ids under ``pid`` (Linux /proc), children first."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        children = [p for p, parent in parents.items() if parent == todo[0]]
        out += children
        todo = todo[1:] + children
    return out


def _wait_until(condition, proc, timeout=180.0) -> None:
    """Poll ``condition`` until it holds; fail if the launching process ended first or the deadline passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before the condition held: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the job process through Linux /proc")
@pytest.mark.parametrize("sig", ["USR2", "USR1"])
def test_submitit_requeue_resumes_from_the_checkpoint(tmp_cwd, sig):
    """Slurm's time-limit / pre-emption warning (``--signal=USR2@90``; USR1 where SUBMITIT_PREEMPT_SIGNAL says so),
    sent to a job of submitit's local executor: ganbench saves a checkpoint and hands the signal on to submitit,
    which requeues the job; the requeued job resumes from that checkpoint (resume=auto, the same job directory) and
    ends at the requested step, bit for bit where an unbroken run ends."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    over = [*tiny_overrides("mlp", dataset="grid25", steps=300, ckpt_every=5, eval_every=100, sample_every=100),
            "resume=auto"]
    cmd = [sys.executable, "-m", "ganbench", "train", "-m", *LAUNCHERS["submitit_local"], *over,
           "hydra.sweep.dir=sweep"]
    env = dict(os.environ, SUBMITIT_PREEMPT_SIGNAL=sig)
    proc = subprocess.Popen(cmd, cwd=tmp_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    job_dir = tmp_cwd / "sweep" / "0_hinge_sn"
    try:
        _wait_until((job_dir / "checkpoints" / "last.pt").exists, proc)
        # the job process (not submitit's controller above it, which would die of a USR signal)
        jobs = [p for p in _descendants(proc.pid)
                if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(jobs) == 1
        os.kill(jobs[0], getattr(signal, f"SIG{sig}"))
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]

    log = (job_dir / "train.log").read_text()
    stopped = re.search(rf"stopped by SIG{sig} at step (\d+); checkpoint saved", log)
    assert stopped, log[-3000:]
    k = int(stopped.group(1))
    assert 0 < k < 300
    submitit_logs = "".join(p.read_text() for p in (tmp_cwd / "sweep" / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs
    assert f"resumed from {job_dir / 'checkpoints' / 'last.pt'} at step {k}" in log
    record = read_metrics(job_dir)
    assert record["status"] == "completed" and record["step"] == 300
    assert [s for s, _ in scalars(job_dir)["loss/d"]] == list(range(1, 301))  # each step logged once

    # the same job unbroken, through the basic launcher: the requeued run ends on the same weights
    assert run_cli(["train", *over, "hydra.run.dir=straight"], tmp_cwd).returncode == 0
    a = checkpoint.load(tmp_cwd / "straight" / "checkpoints" / "last.pt")
    b = checkpoint.load(job_dir / "checkpoints" / "last.pt")
    for net in ("G", "D"):
        assert all(torch.equal(a[net][key], b[net][key]) for key in a[net]), net
    assert read_metrics(tmp_cwd / "straight")["metrics"] == record["metrics"]
