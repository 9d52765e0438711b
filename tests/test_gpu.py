"""CUDA: every loss × constraint pair trains on the GPU through the CUDA graph, and the graph proves itself.

- Every pair, on grid25 and mnist_mini, runs past the capture (:data:`ganbench.fastpath.WARMUP` eager warm-ups, the
  captured and self-checked iteration, then replays) and records ``graph`` in metrics.json; the pairs expected to
  fall back are listed in :data:`EXPECTED_EAGER` with their reason.
- State-level agreement: after 20 iterations the graph's every parameter, buffer, EMA weight, optimizer state, lr
  and RNG state equal, bit for bit, those of the eager iteration with the same optimizer arithmetic (deterministic
  cuDNN), for a set that holds every kind of state the graph must update.
- A fast run with small log / eval / checkpoint intervals (the forked RNG of the Lipschitz estimate and evaluation,
  checkpoints, between replays) ends with the same checkpoint as the same run eager with the same arithmetic.
- A graph run killed with SIGKILL and resumed completes on the graph.
- A forced capture failure (in a subprocess: it must not poison the pytest worker if the unwinding were wrong), then
  ``empty_cache()`` and a second capture that succeeds.

Marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false (the 2-core CI machine); run on a GPU machine
with ``python -m pytest -q -m gpu`` (``scripts/gpu_check.sh`` does, with the bench targets).
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, compose, read_metrics, tiny_overrides
from test_fastpath import make_run, prepared_iteration
from test_train import CONSTRAINTS, LOSSES, assert_run_ok

from ganbench import checkpoint, fastpath
from ganbench.build import build
from ganbench.train import run

log = logging.getLogger("ganbench")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# The warm-ups, the captured (self-checked) iteration and three replays.
PAST_CAPTURE = fastpath.WARMUP + 1 + 3
# (loss, constraint) pairs expected to run eagerly on CUDA, with a phrase of the reason metrics.json gives: none.
EXPECTED_EAGER: dict[tuple[str, str], str] = {}


def on_cuda(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("device=")] + ["device=cuda"]


def assert_path(run_dir, loss: str, constraint: str) -> None:
    execution = read_metrics(run_dir)["execution"]
    assert execution["device"] == torch.cuda.get_device_name() and execution["cuda"] == torch.version.cuda
    expected = EXPECTED_EAGER.get((loss, constraint))
    if expected is None:
        assert execution["path"] == "graph", execution
        assert execution["self_check"].startswith("passed"), execution
        assert execution["eager_iterations"] == fastpath.WARMUP and execution["iterations"] == PAST_CAPTURE
    else:
        assert execution["path"] == "eager" and expected in execution["reason"], execution


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_grid25_cuda_runs_as_a_graph(tmp_path, loss, constraint):
    cfg = compose(on_cuda(tiny_overrides("mlp", steps=PAST_CAPTURE, dataset="grid25", loss=loss,
                                         constraint=constraint)))
    metrics = run(cfg, tmp_path)
    assert_run_ok(tmp_path, PAST_CAPTURE)
    assert 0 <= metrics["modes"] <= 25 and math.isfinite(metrics["w1"])
    assert_path(tmp_path, loss, constraint)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_mnist_mini_cuda_runs_as_a_graph(tmp_path, loss, constraint):
    cfg = compose(on_cuda(tiny_overrides("dcgan", steps=PAST_CAPTURE, loss=loss, constraint=constraint,
                                         eval_every=PAST_CAPTURE)))
    metrics = run(cfg, tmp_path)
    assert_run_ok(tmp_path, PAST_CAPTURE)
    assert math.isfinite(metrics["fd_classifier"])
    assert_path(tmp_path, loss, constraint)


def test_models_and_data_live_on_the_gpu():
    cfg = compose(on_cuda(tiny_overrides("dcgan", steps=2)))
    r = build(cfg, torch.device("cuda"))
    assert r.dataset.device.type == "cuda" and r.dataset.images.dtype == torch.uint8
    assert all(p.device.type == "cuda" for p in [*r.G.parameters(), *r.D.parameters()])


# Between them: SN's u/v, GP, GN, R1, clipping with RMSprop, GAN-QP's real batch in the G step, the EMA, BatchNorm
# (DCGAN's G), instance noise and the lr decay.
STATE_SETTINGS = {
    "hinge-sn-ema-decay": tiny_overrides("dcgan", steps=100, loss="hinge", constraint="sn", ema_decay=0.9,
                                         **{"optim.decay": "linear"}),
    "wgan_gp-none-ema": tiny_overrides("dcgan", steps=100, loss="wgan_gp", constraint="none", ema_decay=0.99),
    "sgan-gn-ndis2": tiny_overrides("dcgan", steps=100, loss="sgan", constraint="gn", n_dis=2),
    "ganqp-r1-decay": tiny_overrides("dcgan", steps=100, loss="ganqp", constraint="r1", **{"optim.decay": "linear"}),
    "wgan-clip-rmsprop-decay": tiny_overrides("dcgan", steps=100, loss="wgan", constraint="clip", optim="rmsprop",
                                              **{"optim.decay": "linear"}),
    "ganqp-noise-mlp": tiny_overrides("mlp", steps=100, dataset="grid25", loss="ganqp", constraint="none",
                                      ema_decay=0.9, **{"instance_noise.std": 0.5, "instance_noise.until": 0.1}),
}
STATE_STEPS = 20


def trained_state(overrides: list[str], make) -> tuple[dict[str, torch.Tensor], object]:
    """Every tensor of the run's state after STATE_STEPS iterations (host copies) and the iteration."""
    r, eager = make_run(on_cuda(overrides) + ["fast=true"], device="cuda")
    iteration = make(r, eager)
    for step in range(STATE_STEPS):
        if r.noise is not None:
            r.noise.at(step)
        iteration()
    lr_tensors = {opt: [g["lr"] if torch.is_tensor(g["lr"]) else None for g in opt.param_groups]
                  for opt in (r.opt_g, r.opt_d)}
    torch.cuda.synchronize()
    state = fastpath.snapshot(fastpath.named_state(r, lr_tensors))
    state["CUDA RNG state"] = torch.cuda.get_rng_state()
    return state, iteration


@pytest.mark.parametrize("name", list(STATE_SETTINGS))
def test_graph_state_equals_eager_state_bit_for_bit_after_20_iterations(deterministic_cudnn, name):
    """Same optimizer arithmetic on both sides (capturable optimizers, the lr tensor, schedulers stepped after the
    iteration): the same kernels on the same random stream, so every tensor must be equal, not just close. A dead
    EMA, stale BatchNorm statistics, an lr off by a rounding or a shifted RNG offset would all fail here."""
    got, iteration = trained_state(STATE_SETTINGS[name], lambda r, eager: fastpath.make_iteration(r, eager, r.cfg, log))
    assert fastpath.describe(iteration).startswith("CUDA graph ("), fastpath.describe(iteration)
    assert iteration.execution()["self_check"].startswith("passed"), iteration.execution()
    expected, _ = trained_state(STATE_SETTINGS[name], prepared_iteration)
    assert got.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert differing == [], f"{len(differing)} of {len(expected)} tensors differ, first {differing[:5]}"


INTERVAL_SETTINGS = {
    "dcgan-hinge-sn-ema-decay": tiny_overrides("dcgan", steps=14, loss="hinge", constraint="sn", ema_decay=0.9,
                                               **{"optim.decay": "linear"}),
    "mlp-wgan_gp-noise": tiny_overrides("mlp", steps=14, dataset="grid25", loss="wgan_gp", constraint="none",
                                        **{"instance_noise.std": 0.3}),
}


@pytest.mark.parametrize("name", list(INTERVAL_SETTINGS))
def test_a_fast_run_with_small_intervals_ends_with_the_eager_runs_checkpoint(deterministic_cudnn, monkeypatch,
                                                                             tmp_path, name):
    """`ganbench train` with fast=true, logging every 2 steps, sampling every 3, evaluating every 5 and checkpointing
    every 4 (the forked RNG of the Lipschitz estimate and evaluation, checkpoint writes, between replays), against the
    same run eager with the same optimizer arithmetic (the fast path's warm-up never ending): equal checkpoints."""
    overrides = on_cuda(INTERVAL_SETTINGS[name]) + ["log_every=2", "sample_every=3", "eval_every=5", "ckpt_every=4"]
    run(compose(overrides), tmp_path / "graph")
    assert read_metrics(tmp_path / "graph")["execution"]["path"] == "graph"
    monkeypatch.setattr(fastpath, "WARMUP", 10**9)
    run(compose(overrides), tmp_path / "eager")
    assert read_metrics(tmp_path / "eager")["execution"]["path"] == "eager"
    graph = checkpoint.load(tmp_path / "graph" / "checkpoints" / "last.pt")
    eager = checkpoint.load(tmp_path / "eager" / "checkpoints" / "last.pt")
    assert graph["step"] == eager["step"] == 14
    assert_same(graph, eager)
    assert read_metrics(tmp_path / "graph")["history"] == read_metrics(tmp_path / "eager")["history"]


def assert_same(a, b, where: str = "checkpoint") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_a_graph_run_killed_and_resumed_completes_on_the_graph(tmp_path):
    args = [sys.executable, "-m", "ganbench.cli", "train", *on_cuda(tiny_overrides(
        "mlp", steps=3000, dataset="grid25", log_every=100, sample_every=1000, eval_every=1000, ckpt_every=100)),
        f"hydra.run.dir={tmp_path}"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / "last.pt").is_file() and first.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["step"]
    assert 0 < saved < 3000
    resumed = subprocess.run([*args, f"resume={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    record = read_metrics(tmp_path)
    assert record["status"] == "completed" and record["step"] == 3000
    assert record["execution"]["path"] == "graph" and record["execution"]["iterations"] == 3000 - saved


FAILED_THEN_CAPTURED = r"""
import logging, sys
import torch
sys.path.insert(0, "tests")
from conftest import tiny_overrides
from test_fastpath import make_run
from ganbench import fastpath

log = logging.getLogger("ganbench")
overrides = [o for o in tiny_overrides("dcgan", steps=100) if not o.startswith("device=")] + ["device=cuda"]
r, eager = make_run(overrides, device="cuda")

def syncing_iteration():
    d, g = eager()
    if float(d.total) > 1e30:  # a host sync: not allowed while a graph is being captured
        pass
    return d, g

first = fastpath.make_iteration(r, syncing_iteration, r.cfg, log)
for _ in range(6):
    first()
assert first.execution()["path"] == "eager", first.execution()
assert first.execution()["reason"].startswith("capture failed: "), first.execution()
assert "not restored" not in first.execution()["reason"], first.execution()
torch.cuda.synchronize()
torch.cuda.empty_cache()  # fails while the allocator still counts a capture as under way
r, eager = make_run(overrides, device="cuda")
second = fastpath.make_iteration(r, eager, r.cfg, log)
for _ in range(6):
    second()
assert second.execution()["path"] == "graph", second.execution()
assert second.execution()["self_check"].startswith("passed"), second.execution()
g = torch.cuda.CUDAGraph()  # and torch's own capture works
x = torch.zeros(8, device="cuda")
with torch.cuda.graph(g):
    y = x + 1
g.replay()
torch.cuda.synchronize()
assert float(y.sum()) == 8
del first, second, g
torch.cuda.empty_cache()
print("OK")
"""


def test_a_failed_capture_then_empty_cache_and_a_second_capture_in_one_process():
    result = subprocess.run([sys.executable, "-c", FAILED_THEN_CAPTURED], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (result.stdout[-3000:],
                                                                             result.stderr[-3000:])

