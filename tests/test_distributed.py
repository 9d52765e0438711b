"""One run on several processes (ganbench/distributed.py), on this CPU with gloo.

Two kinds of test: 2 ranks forked in-process (torch.multiprocessing, gloo on 127.0.0.1) that call the real build /
train_iteration / train.run, for the numbers; and `torchrun -m ganbench train` end to end, for what a user sees.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import read_metrics, tiny_overrides
from test_train import scalars

from ganbench import build as build_module
from ganbench import checkpoint, config, constraints, distributed, rundir, train
from ganbench.errors import GanbenchError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")

CPU = torch.device("cpu")
# GP, GN and SN pairs, plus the other double-backward constraints (R1, GraN).
PAIRS = [("hinge", "sn"), ("wgan_gp", "none"), ("wgan", "gn"), ("hinge", "r1"), ("hinge", "gran")]


def toy(steps: int = 4, **extra) -> list[str]:
    return tiny_overrides("mlp", dataset="grid25", steps=steps, **extra)


# --- 2 ranks in this machine, forked -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env()
    try:
        fn(rank, *args)
    finally:
        distributed.shutdown()


def on_ranks(fn, *args, world: int = 2, timeout: float = 120.0) -> None:
    """Run ``fn(rank, *args)`` on ``world`` forked ranks joined by gloo; fail (never hang) past ``timeout``."""
    ctx = mp.start_processes(_rank_main, args=(world, _free_port(), fn, args), nprocs=world, join=False,
                             start_method="fork")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.5):
            assert time.monotonic() < deadline, "the ranks did not finish in time (a hang)"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _recording(r: build_module.Run, draws: dict) -> None:
    """Record every random draw of the training step (real batches, latents, GP's ε) in call order."""
    sample, sample_z = r.dataset.sample, r.G.sample_z

    def interpolates(real, fake):
        eps = torch.rand(real.shape[0], *[1] * (real.dim() - 1), dtype=real.dtype)
        draws["eps"].append(eps)
        return eps * real + (1 - eps) * fake

    r.dataset.sample = lambda n: draws["real"].append(sample(n)) or draws["real"][-1]
    r.G.sample_z = lambda n, **kw: draws["z"].append(sample_z(n, **kw)) or draws["z"][-1]
    constraints._interpolates = interpolates


def _replaying(r: build_module.Run, per_rank: list[dict]) -> None:
    """Feed one process the concatenation of every rank's i-th draw, in the ranks' call order."""
    streams = {k: iter([torch.cat(parts) for parts in zip(*(d[k] for d in per_rank))]) for k in per_rank[0]}

    def take(kind, n):
        out = next(streams[kind])
        assert len(out) == n
        return out

    r.dataset.sample = lambda n: take("real", n)
    r.G.sample_z = lambda n, **kw: take("z", n)
    constraints._interpolates = lambda real, fake: (lambda eps: eps * real + (1 - eps) * fake)(take("eps", len(real)))


def _train_recording(rank: int, overrides: list[str], iterations: int, out: Path) -> None:
    r = build_module.build(config.compose(overrides), CPU)
    draws = {"real": [], "z": [], "eps": []}
    _recording(r, draws)
    Dw = r.constraint.wrap(r.D)
    penalties = r.constraint.run_penalties(r.loss)
    for _ in range(iterations):
        train.train_iteration(r, Dw, penalties)
    torch.save({"G": r.G.state_dict(), "D": r.D.state_dict(), "draws": draws}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("loss,constraint", PAIRS)
def test_two_ranks_keep_identical_weights_and_match_one_process_on_the_joint_batch(tmp_path, monkeypatch, loss,
                                                                                    constraint):
    """After 6 iterations both ranks hold bit-identical G and D (spectral norm's u, v included). One process fed the
    concatenation of both ranks' batches, latents and GP ε (its batch is the global batch) ends on the same weights
    to float rounding: the averaged gradient of two half-batch means equals the gradient of the full-batch mean up
    to summation order. Measured: at most 6e-8 (a few float32 ulps of these weights) after 6 Adam steps, for every
    pair here; the bound is atol 1e-6. The data themselves differ from a plain single-process run with the same seed
    by design (each rank draws its own stream), hence the joint-batch replay rather than a rerun."""
    over = toy(batch_size=16, loss=loss, constraint=constraint)
    on_ranks(_train_recording, over, 6, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in range(2)]
    for net in ("G", "D"):
        assert ranks[0][net].keys() == ranks[1][net].keys()
        for key in ranks[0][net]:
            assert torch.equal(ranks[0][net][key], ranks[1][net][key]), (net, key)
    if constraint == "sn":
        assert any(k.endswith("_u") for k in ranks[0]["D"])
    # each rank drew its own half batch from its own stream
    assert len(ranks[0]["draws"]["real"][0]) == 8 and not torch.equal(ranks[0]["draws"]["real"][0],
                                                                       ranks[1]["draws"]["real"][0])
    monkeypatch.setattr(constraints, "_interpolates", constraints._interpolates)  # restored after the replay below
    single = build_module.build(config.compose(over), CPU)
    _replaying(single, [rk["draws"] for rk in ranks])
    Dw = single.constraint.wrap(single.D)
    penalties = single.constraint.run_penalties(single.loss)
    for _ in range(6):
        train.train_iteration(single, Dw, penalties)
    for net, module in (("G", single.G), ("D", single.D)):
        for key, value in module.state_dict().items():
            torch.testing.assert_close(ranks[0][net][key], value, rtol=0, atol=1e-6, msg=f"{net} {key}")


def _full_run(rank: int, overrides: list[str], run_dir: Path, fault: tuple | None, out: Path) -> None:
    """train.run on this rank; ``fault`` = (kind, rank, step): rank ``rank`` gets a NaN batch or a SIGTERM there."""
    cfg = config.compose(overrides)
    built = build_module.build

    def build(cfg, device):
        r = built(cfg, device)
        if fault and fault[1] == rank:
            kind, _, step = fault
            sample, sent = r.dataset.sample, []

            def faulty(n):
                x = sample(n)
                if r.step + 1 == step and kind == "nan":
                    return torch.full_like(x, float("nan"))
                if r.step + 1 == step and kind == "sigterm" and not sent:
                    sent.append(os.kill(os.getpid(), signal.SIGTERM))
                return x

            r.dataset.sample = faulty
        return r

    train.build = build
    try:
        train.run(cfg, run_dir)
        outcome = "completed"
    except SystemExit as e:
        outcome = f"exit {e.code}"
    except GanbenchError as e:
        outcome = f"error: {e}"
    (out / f"outcome{rank}.txt").write_text(outcome)


def _outcomes(path: Path) -> list[str]:
    return [(path / f"outcome{k}.txt").read_text() for k in range(2)]


def test_nan_on_one_rank_stops_both_with_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    on_ranks(_full_run, toy(steps=8), run_dir, ("nan", 1, 3), tmp_path)
    outcomes = _outcomes(tmp_path)
    assert all(o.startswith("error: training diverged: a non-finite loss appeared at step 3") for o in outcomes)
    record = read_metrics(run_dir)
    assert record["status"] == "diverged" and "step 3" in record["error"]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 2  # the last good one, nothing later


def test_sigterm_on_one_rank_stops_both_after_the_same_step_and_resume_is_exact(tmp_path):
    """A signal to rank 1 only: both ranks stop after step 3 with one checkpoint and exit 143. Resumed with both ranks
    (resume=auto), the job ends bit for bit where an unbroken 2-rank run ends: the checkpoint holds each rank's RNG."""
    on_ranks(_full_run, toy(steps=6), tmp_path / "straight", None, tmp_path / "straight")
    run_dir = tmp_path / "broken"
    on_ranks(_full_run, toy(steps=6), run_dir, ("sigterm", 1, 3), tmp_path)
    assert _outcomes(tmp_path) == ["exit 143", "exit 143"]
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 3 and len(state["rng_ranks"]) == 2
    assert read_metrics(run_dir)["status"] == "interrupted"

    on_ranks(_full_run, [*toy(steps=6), "resume=auto"], run_dir, None, tmp_path)
    assert _outcomes(tmp_path) == ["completed", "completed"]
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert b["step"] == 6
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert read_metrics(tmp_path / "straight")["metrics"] == read_metrics(run_dir)["metrics"]


# --- torchrun end to end -----------------------------------------------------------------------------------------

def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 300, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port",
           str(_free_port()), "-m", "ganbench", "train", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, text=True, **popen)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_two_processes_make_one_run(tmp_cwd):
    """A torchrun job, shrunk: one run directory (its name from rank 0's clock), TensorBoard events from one
    process, each step logged once, metrics.json, and a checkpoint that loads and holds both ranks' RNG states."""
    proc = torchrun(toy(steps=6, batch_size=16), tmp_cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_cwd / "outputs" / "runs").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    writers = {p.name.split(".")[-2] for p in run_dir.glob("events.out.tfevents.*")}  # the writing process's pid
    assert len(writers) == 1
    assert [s for s, _ in scalars(run_dir)["loss/d"]] == list(range(1, 7))
    assert read_metrics(run_dir)["status"] == "completed" and read_metrics(run_dir)["step"] == 6
    state = checkpoint.load(rundir.find_checkpoint(run_dir))
    assert state["step"] == 6 and len(state["rng_ranks"]) == 2
    assert proc.stdout.count("run dir:") == 1  # rank 0 speaks; the other rank logs only warnings
    assert "Traceback" not in proc.stderr


def test_torchrun_one_process_is_the_single_process_run(tmp_cwd):
    """The whole collective code path (process group, gradient all-reduce, agreement) with one rank changes no bit."""
    proc = torchrun([*toy(steps=4), "hydra.run.dir=one"], tmp_cwd, nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = subprocess.run([sys.executable, "-m", "ganbench", "train", *toy(steps=4), "hydra.run.dir=plain"],
                           cwd=tmp_cwd, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = (checkpoint.load(tmp_cwd / d / "checkpoints" / "last.pt") for d in ("one", "plain"))
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert scalars(tmp_cwd / "one")["loss/d"] == scalars(tmp_cwd / "plain")["loss/d"]


def test_torchrun_batch_not_divisible_is_one_line_on_rank_0(tmp_cwd):
    proc = torchrun(toy(batch_size=9), tmp_cwd)
    assert proc.returncode != 0
    line = "ganbench: error: batch_size=9 does not split over the 2 processes torchrun started"
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    # no traceback of a worker (torchrun's own failure summary follows the line, with the launcher's frames only)
    assert "/ganbench/" not in proc.stderr
    assert not (tmp_cwd / "outputs").exists()


def test_no_gloo_is_one_line(monkeypatch):
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.distributed, "is_gloo_available", lambda: False)
    with pytest.raises(GanbenchError, match=r"^torchrun started 2 processes but this PyTorch has no gloo backend"):
        config.validate(config.compose(toy(batch_size=16)))


@pytest.mark.slow
def test_torchrun_kill9_of_one_rank_then_resume_ends_at_the_requested_step(tmp_cwd):
    """kill -9 of rank 1 mid-run: the job fails (rank 0 stops at its next collective); the whole job resumed with
    resume=auto ends at the requested step (20 past the stop; the first job asks for more steps than it can reach)
    with loadable checkpoints."""
    over = [*toy(steps=10**6, batch_size=16, ckpt_every=5, eval_every=200, sample_every=200), "hydra.run.dir=run",
            "resume=auto"]
    proc = torchrun(over, tmp_cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_cwd / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
        time.sleep(0.02)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and b"RANK=1\0" in _environ(p) and str(proc.pid) in _ancestors(int(p.name))]
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    # rank 0 says what happened in one line (when it meets the dead peer before torchrun stops it), no traceback
    assert err.count("ganbench: error: another process of this torchrun job stopped") <= 1
    assert "internal error" not in err and "/ganbench/" not in err
    step = checkpoint.load(rundir.find_checkpoint(tmp_cwd / "run"))["step"]
    assert step > 0

    again = torchrun([*over, f"steps={step + 20}"], tmp_cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {step}" in again.stdout
    assert read_metrics(tmp_cwd / "run")["status"] == "completed"
    for name in ("last.pt", "prev.pt"):
        assert checkpoint.load(tmp_cwd / "run" / "checkpoints" / name)["step"] > 0
    assert checkpoint.load(ckpt)["step"] == step + 20


def _environ(p: Path) -> bytes:
    try:
        return b"\0" + (p / "environ").read_bytes()
    except OSError:
        return b""


def _ancestors(pid: int) -> str:
    chain = []
    while pid > 1:
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(str(pid))
    return " ".join(chain)


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_with_one_checkpoint(tmp_cwd):
    """What `scancel` or a pre-emption does to `srun torchrun ...`: torchrun passes SIGTERM to its workers; they agree
    on the step, rank 0 saves one checkpoint there, and a resumed job ends at the requested step. The job asks for
    far more steps than it can reach before the signal (a 400-step job once finished first on a fast CI box), and the
    resume asks for 50 past the stop."""
    over = [*toy(steps=10**6, batch_size=16, ckpt_every=50, eval_every=200, sample_every=200), "hydra.run.dir=run"]
    proc = torchrun(over, tmp_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_checkpoint = tmp_cwd / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not first_checkpoint.exists():  # training is under way (the event file alone can precede step 1 under load)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0
    record = read_metrics(tmp_cwd / "run")
    state = checkpoint.load(tmp_cwd / "run" / "checkpoints" / "last.pt")
    assert record["status"] == "interrupted" and record["step"] == state["step"] > 0, err[-3000:]
    assert len(state["rng_ranks"]) == 2
    assert out.count("stopped by SIGTERM") == 1 and "/ganbench/" not in err
    again = torchrun([*over, "resume=run", f"steps={state['step'] + 50}"], tmp_cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_metrics(tmp_cwd / "run")["step"] == state["step"] + 50
