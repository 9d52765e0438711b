"""The CUDA fast path (ganbench/fastpath.py).

On the CPU: make_iteration leaves the iteration alone, and everything the graph path runs besides the capture
computes what the eager path computes. That is the capturable optimizers, the tensor lr, the schedulers held back
during the iteration and stepped after it, and the checkpoint format. GraphedIteration's own logic (warm-up, capture,
self-check, replays, the unwinding of a failed capture) runs over an emulated torch.cuda (:class:`FakeCuda`). Capture
itself needs CUDA: the ``gpu`` tests at the bottom check graph-vs-eager agreement of the losses over the first
iterations; tests/test_gpu.py holds the state-level, checkpoint, resume and failed-capture checks.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
from contextlib import nullcontext
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from conftest import compose, tiny_overrides

from ganbench import checkpoint, fastpath, methods
from ganbench.build import build
from ganbench.train import train_iteration

log = logging.getLogger("ganbench")


def make_run(overrides: list[str], device: str = "cpu", foreach: bool | None = None):
    """A built run and its eager iteration, exactly as `ganbench train` composes them."""
    cfg = compose([o for o in overrides if not o.startswith("device=")] + [f"device={device}"])
    r = build(cfg, torch.device(device))
    if foreach is not None:
        for opt in (r.opt_g, r.opt_d):
            for group in opt.param_groups:
                group["foreach"] = foreach
    Dw = r.constraint.wrap(r.D)
    penalties = r.constraint.run_penalties(r.loss)
    return r, partial(train_iteration, r, Dw, penalties)


def prepared_iteration(r, eager):
    """What a replay does, without the capture: the iteration with the schedulers held back, then the host side."""
    fastpath.prepare(r)
    lr_tensors = {opt: [g["lr"] if torch.is_tensor(g["lr"]) else None for g in opt.param_groups]
                  for opt in (r.opt_g, r.opt_d)}

    def iteration():
        with fastpath.held_back(r.schedulers):
            out = eager()
        fastpath.step_schedulers(r, lr_tensors)
        return out
    return iteration


def losses(iteration, steps: int) -> torch.Tensor:
    """(steps, 2): loss/d and loss/g of each iteration, copied out before the next call (static outputs)."""
    return torch.stack([torch.stack([d.total.detach().clone(), g.total.detach().clone()])
                        for d, g in (iteration() for _ in range(steps))])


def weights(r) -> list[torch.Tensor]:
    return [t.detach().clone() for m in (r.G, r.D) for t in (*m.parameters(), *m.buffers())]


@pytest.fixture
def capturable_on_cpu(monkeypatch):
    """torch allows capturable optimizers on CUDA-like devices only; the arithmetic itself runs on the CPU too."""
    def devices(*args, **kwargs) -> list[str]:
        return ["cpu", "cuda"]
    for module in ("torch.optim.adam", "torch.optim.rmsprop"):
        monkeypatch.setattr(importlib.import_module(module), "_get_capturable_supported_devices", devices)


# Pairs that between them use every hook the graph must hold: SN's power iteration, GP/R1/div double backward,
# GN/GraN in both steps, clipping with RMSprop, GAN-QP's real batch in the G step, the LR schedule, the EMA and
# instance noise.
PAIRS = [
    ["loss=hinge", "constraint=sn"],
    ["loss=wgan_gp", "constraint=none", "optim.decay=linear", "ema_decay=0.9"],
    ["loss=sgan", "constraint=gn", "n_dis=2"],
    ["loss=lsgan", "constraint=gran"],
    ["loss=ganqp", "constraint=r1", "optim.decay=linear"],
    ["loss=wgan_div", "constraint=none"],
    ["loss=wgan", "constraint=clip", "optim=rmsprop", "optim.decay=linear"],
    ["loss=ganqp", "constraint=none", "instance_noise.std=0.3"],
]
STEPS = 6


def test_cpu_gets_the_eager_iteration_itself():
    r, eager = make_run(tiny_overrides("dcgan"))
    for cfg in (r.cfg, compose(tiny_overrides("dcgan", fast=False, precision="bf16", channels_last=True))):
        assert fastpath.make_iteration(r, eager, cfg, log) is eager
    assert not any(g.get("capturable") for opt in (r.opt_g, r.opt_d) for g in opt.param_groups)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(o.split("=")[1] for o in p[:2]))
def test_prepared_iteration_is_the_eager_iteration_bit_for_bit(capturable_on_cpu, pair):
    """Same optimizer arithmetic on both sides (capturable, float lr): the graph path's host logic changes nothing.

    Held-back schedulers stepped after the iteration, and a float32 tensor lr written in place, give the same bits
    as the eager loop. RMSprop with a tensor lr divides by it rather than scaling by it, so it is compared to float
    rounding instead.
    """
    overrides = tiny_overrides("dcgan", steps=20) + pair
    r_eager, eager = make_run(overrides, foreach=True)
    for opt in (r_eager.opt_g, r_eager.opt_d):
        fastpath.make_capturable(opt, tensor_lr=False)
    expected = losses(eager, STEPS)
    r, eager = make_run(overrides, foreach=True)
    got = losses(prepared_iteration(r, eager), STEPS)
    if "optim=rmsprop" in pair:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)
    else:
        assert torch.equal(got, expected)
        assert all(torch.equal(a, b) for a, b in zip(weights(r), weights(r_eager)))
    lrs = [float(g["lr"]) for opt in (r.opt_g, r.opt_d) for g in opt.param_groups]
    assert lrs == pytest.approx([float(g["lr"]) for opt in (r_eager.opt_g, r_eager.opt_d) for g in opt.param_groups],
                                rel=1e-6)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "-".join(o.split("=")[1] for o in p[:2]))
def test_prepared_iteration_matches_eager_within_float_rounding(capturable_on_cpu, pair):
    """Against the eager loop as `ganbench train` runs it (non-capturable optimizers), from the same seed.

    With n_dis=1 the first D loss is bitwise equal (nothing has been updated yet). After that they differ by float32
    rounding only. Capturable Adam computes its bias correction in float32 tensors, where the eager Adam uses
    float64 on the host. Adam's normalised step can turn such a difference in a near-zero gradient into up to one
    lr of weight change, hence the weight tolerance of a few lr.
    """
    overrides = tiny_overrides("dcgan", steps=20) + pair
    r_eager, eager = make_run(overrides, foreach=True)
    expected = losses(eager, STEPS)
    r, eager = make_run(overrides, foreach=True)
    got = losses(prepared_iteration(r, eager), STEPS)
    if r.cfg.n_dis == 1:
        assert torch.equal(got[0, 0], expected[0, 0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for a, b in zip(weights(r), weights(r_eager)):
        torch.testing.assert_close(a, b, rtol=0, atol=5 * float(r.cfg.optim.lr_d))


def test_prepared_optimizers_are_capturable_with_tensor_lr_only_under_a_schedule(capturable_on_cpu):
    r, _ = make_run(tiny_overrides("dcgan"))
    fastpath.prepare(r)
    assert all(g["capturable"] and isinstance(g["lr"], float) for opt in (r.opt_g, r.opt_d) for g in opt.param_groups)
    r, _ = make_run(tiny_overrides("dcgan", **{"optim.decay": "linear"}))
    fastpath.prepare(r)
    assert all(g["capturable"] and torch.is_tensor(g["lr"]) for opt in (r.opt_g, r.opt_d) for g in opt.param_groups)


def test_checkpoints_of_a_prepared_run_are_eager_checkpoints(capturable_on_cpu, tmp_path):
    """A fast run's checkpoint resumes in an eager run, which continues as the fast run does (to float rounding)."""
    overrides = tiny_overrides("dcgan", steps=20, **{"optim.decay": "linear"})
    r, eager = make_run(overrides)
    iteration = prepared_iteration(r, eager)
    losses(iteration, 3)
    r.step = 3
    for opt in (r.opt_g, r.opt_d):
        state = opt.state_dict()
        assert all(g["capturable"] is False and isinstance(g["lr"], float) for g in state["param_groups"])
        assert all(s["step"].device.type == "cpu" and float(s["step"]) == 3 for s in state["state"].values())
        assert all(g["capturable"] and torch.is_tensor(g["lr"]) for g in opt.param_groups)  # the live one is kept
    checkpoint.save(r.state(), tmp_path)
    saved = checkpoint.load(tmp_path / "last.pt")
    r_eager, eager = make_run(overrides)
    r_eager.restore(saved, tmp_path / "last.pt")  # also restores the RNG state of step 3
    assert all(g["capturable"] is False and isinstance(g["lr"], float) for g in r_eager.opt_d.param_groups)
    assert [float(g["lr"]) for g in r_eager.opt_d.param_groups] == pytest.approx(
        [float(g["lr"]) for g in r.opt_d.param_groups])
    expected = losses(eager, 3)
    torch.set_rng_state(saved["rng"]["cpu"])
    torch.testing.assert_close(losses(iteration, 3), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_held_back_schedulers_do_not_step_and_come_back():
    r, _ = make_run(tiny_overrides("dcgan", **{"optim.decay": "linear"}))
    lrs = [g["lr"] for g in r.opt_g.param_groups]
    with fastpath.held_back(r.schedulers):
        for s in r.schedulers:
            s.step()
    assert [s.last_epoch for s in r.schedulers] == [0, 0] and [g["lr"] for g in r.opt_g.param_groups] == lrs
    for s in r.schedulers:
        s.step()
    assert [s.last_epoch for s in r.schedulers] == [1, 1]


def test_reasons_for_eager_are_named():
    r, eager = make_run(tiny_overrides("dcgan"))
    assert fastpath.not_capturable(r) == "cpu"
    record = fastpath.execution(eager, r, 0)
    assert record["path"] == "eager" and record["reason"] == "cpu" and record["self_check"] == "not run"
    dataset, device = r.dataset, r.device
    r.device, r.dataset = torch.device("cuda"), SimpleNamespace(device=torch.device("cuda:0"))  # the same place
    assert fastpath.not_capturable(r) is None
    r.cfg.fast = False
    assert fastpath.not_capturable(r) == "fast=false"
    r.cfg.fast = True
    r.dataset = SimpleNamespace(device=torch.device("cpu"))
    assert fastpath.not_capturable(r) == "the dataset is on cpu, not on cuda"
    r.dataset = dataset
    r.opt_d = torch.optim.SGD(r.D.parameters(), lr=0.1)
    assert fastpath.not_capturable(r) == "the D optimizer (SGD) has no capturable mode"
    r.device = device


class FakeCuda:
    """torch.cuda's stream/graph/pool/generator calls as GraphedIteration makes them, emulated on the CPU.

    A "capture" runs the iteration and then puts every weight, buffer, optimizer state and the RNG back, so it leaves
    no trace, as a real capture does (it records kernels without running them). A "replay" runs the iteration again
    and copies its results into the tensors the capture returned, as a real replay overwrites its static outputs;
    ``corrupt`` makes the first replay differ from the eager iteration the way a broken graph would.

    The caching allocator is modelled as far as a failed capture touches it: private pools with use counts, the list
    of captures under way, and ``empty_cache``, which fails while a capture is counted as under way. ``fail`` makes
    the capture fail the way a host sync does: the body raises and ``capture_end`` raises again. How torch unwinds
    that differs by version; ``version`` picks one: "2.11" (``capture_end`` raises before it ends the allocation to
    the pool, and ``reset`` keeps a failed capture's pool) or "2.14" (both done by torch).
    """

    def __init__(self, r, eager, fail: bool = False, version: str = "2.11", corrupt: str | None = None):
        self.r, self.eager, self.fail, self.version, self.corrupt = r, eager, fail, version, corrupt
        self.capturing, self.graph, self.last_out = False, None, None
        self.restored, self.pools, self.underway, self.freed, self.errors = [], {}, [], [], []
        self.next_pool = 0

    def iteration(self):
        if self.capturing and self.fail:
            self.graph.invalid = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")
        self.last_out = self.eager()
        return self.last_out

    def release(self, pool) -> None:
        self.pools[pool] -= 1
        if self.pools[pool] < 0:
            self.errors.append(f"releasePool {pool}: uc >= 0 INTERNAL ASSERT FAILED")

    def end_allocate(self, index, pool) -> None:
        if pool not in self.underway:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.underway.remove(pool)

    def empty_cache(self) -> None:
        if self.underway:
            raise RuntimeError("captures_underway.empty() INTERNAL ASSERT FAILED")
        for pool in [p for p, n in self.pools.items() if n == 0]:
            del self.pools[pool]
            self.freed.append(pool)

    def install(self, monkeypatch) -> FakeCuda:
        fake = self

        class MemPool:
            def __init__(self):
                fake.next_pool += 1
                self.id = (0, fake.next_pool)
                fake.pools[self.id] = 1

            def use_count(self) -> int:
                return fake.pools[self.id]

            def __del__(self):
                fake.release(self.id)

        class Graph:
            def __init__(self):
                self.pool, self.invalid, self.ended, self.released = None, False, False, False

            def capture_begin(self, pool=None, capture_error_mode="global"):
                self.pool = pool
                fake.pools[pool] += 1
                fake.underway.append(pool)
                self.saved = [(t, t.detach().clone()) for t in state_tensors(fake.r)], torch.get_rng_state()
                fake.capturing, fake.graph = True, self

            def capture_end(self):
                fake.capturing, fake.graph = False, None
                with torch.no_grad():
                    for t, copy in self.saved[0]:
                        t.copy_(copy)
                torch.set_rng_state(self.saved[1])
                if self.invalid:
                    if fake.version == "2.14":
                        fake.end_allocate(0, self.pool)
                    raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
                fake.end_allocate(0, self.pool)
                self.ended, self.out = True, fake.last_out

            def replay(self):  # a replay runs no Python: the schedulers are GraphedIteration's to step
                r = fake.r
                kept = {"ema": [p for p in r.G_ema.parameters()] if r.G_ema is not None else [],
                        "bn": [b for n, b in r.G.named_buffers() if n.endswith("running_mean")],
                        "sn_u": [b for n, b in r.D.named_buffers() if n.endswith("_u")]}.get(fake.corrupt, [])
                kept = [(t, t.detach().clone()) for t in kept]
                d_before = [p.detach().clone() for p in r.D.parameters()]
                with fastpath.held_back(r.schedulers):
                    fresh = fake.eager()
                for static, fresh_tensor in zip(flat(self.out), flat(fresh)):
                    static.copy_(fresh_tensor)
                with torch.no_grad():
                    for t, value in kept:
                        t.copy_(value)
                    if fake.corrupt == "lr":  # D's step 2 % longer than the eager one
                        for p, before in zip(r.D.parameters(), d_before):
                            p.copy_(before + 1.02 * (p - before))
                fake.corrupt = None  # broken once is enough: the self-check sees the first replay

            def reset(self):
                if not self.released and (self.ended or (self.pool is not None and fake.version == "2.14")):
                    fake.release(self.pool)
                self.released = True

            def __del__(self):  # as torch's CUDAGraph destructor
                self.reset()

        class Generator:
            def clone_state(self):
                return "state before the capture"

            def graphsafe_set_state(self, state):
                fake.restored.append(state)

            def get_state(self):
                return torch.get_rng_state()

            def set_state(self, state):
                torch.set_rng_state(state)

        class Stream:
            def __init__(self, device=None):
                pass

            def wait_stream(self, other):
                pass

        fakes = {"Stream": Stream, "stream": lambda s: nullcontext(), "current_stream": lambda d=None: Stream(),
                 "CUDAGraph": Graph, "MemPool": MemPool, "default_generators": [Generator()],
                 "current_device": lambda: 0, "synchronize": lambda d=None: None, "empty_cache": self.empty_cache}
        for name, value in fakes.items():
            monkeypatch.setattr(torch.cuda, name, value, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", self.end_allocate, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda index, pool: self.release(pool), raising=False)
        return self

    def assert_healthy(self) -> None:
        """No capture counted as under way, no allocator assertion hit, every pool freed once nothing holds it."""
        gc.collect()
        self.empty_cache()
        assert self.underway == [] and self.errors == [] and self.pools == {}, (self.underway, self.errors, self.pools)


def flat(out) -> list[torch.Tensor]:
    return [t for p in out for t in (p.total, *p.parts.values())]


def state_tensors(r) -> list[torch.Tensor]:
    modules = [m for m in (r.G, r.D, r.G_ema) if m is not None]
    return [*(t for m in modules for t in (*m.parameters(), *m.buffers())),
            *(v for opt in (r.opt_g, r.opt_d) for s in opt.state.values() for v in s.values() if torch.is_tensor(v))]


EMULATED = dict(loss="wgan_gp", constraint="sn", ema_decay=0.9, **{"optim.decay": "linear"})


def emulated(monkeypatch, steps: int = 8, **fake_args):
    """(losses of ``steps`` calls of a GraphedIteration over the emulated capture, its static-output identities,
    the run, the FakeCuda, the iteration) and the reference: the eager iteration with the same optimizer arithmetic."""
    overrides = tiny_overrides("dcgan", steps=20, **EMULATED)
    r_ref, eager = make_run(overrides)
    expected = losses(prepared_iteration(r_ref, eager), steps)
    r, eager = make_run(overrides)
    fastpath.prepare(r)
    fake = FakeCuda(r, eager, **fake_args).install(monkeypatch)
    iteration = fastpath.GraphedIteration(fake.iteration, r, log, exact=True)
    outs, got = [], []
    for _ in range(steps):
        d, g = iteration()
        outs.append(d.total)
        got.append(torch.stack([d.total.clone(), g.total.clone()]))
    return torch.stack(got), outs, r, fake, iteration, expected, r_ref


def fast_path_lines(caplog) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if "fast path" in rec.getMessage()]


@pytest.mark.parametrize("version", ["2.11", "2.14"])
@pytest.mark.parametrize("fail", [False, True], ids=["captured", "capture-fails"])
def test_graphed_iteration_logic_with_an_emulated_capture(capturable_on_cpu, monkeypatch, caplog, fail, version):
    """GraphedIteration's own logic on the CPU: 3 eager warm-ups, capture, self-check, replays whose static outputs
    the next call overwrites, schedulers stepped after each replay; or, when the capture fails, the capture unwound
    (no capture left under way, the pool released, the generator restored), one warning and eager from then on.
    Either way its losses, weights and lr are the eager iteration's, bit for bit, and the allocator is healthy."""
    with caplog.at_level(logging.INFO, logger="ganbench"):
        got, outs, r, fake, iteration, expected, r_ref = emulated(monkeypatch, fail=fail, version=version)
    assert torch.equal(got, expected)
    lines = fast_path_lines(caplog)
    assert len(lines) == 1, lines
    record = iteration.execution()
    if fail:
        assert fake.restored == ["state before the capture"]
        why = "capture failed: RuntimeError: CUDA error: operation not permitted when stream is capturing"
        assert fastpath.describe(iteration) == f"eager fallback ({why})"
        assert "runs eagerly from now on" in lines[0] and why in lines[0]
        assert caplog.records[-1].levelno == logging.WARNING
        assert record == {"path": "eager", "reason": why, "self_check": "not run", "eager_iterations": 8}
        assert fake.pools == {} and len(fake.freed) == 1  # the failed capture's pool: released and freed at once
    else:
        assert fake.restored == [] and fastpath.describe(iteration).startswith("CUDA graph (")
        assert "runs as one CUDA graph" in lines[0] and "self-check passed, bit for bit" in lines[0]
        assert all(t is outs[3] for t in outs[3:])  # static outputs from the capture on, overwritten by each call
        assert record == {"path": "graph", "reason": None, "self_check": "passed, bit for bit", "eager_iterations": 3}
    assert all(torch.equal(a, b) for a, b in zip(weights(r), weights(r_ref)))
    assert all(torch.equal(a, b) for a, b in zip(r.G_ema.state_dict().values(), r_ref.G_ema.state_dict().values()))
    assert [float(g["lr"]) for g in r.opt_d.param_groups] == [float(g["lr"]) for g in r_ref.opt_d.param_groups]
    assert [s.last_epoch for s in r.schedulers] == [8, 8]
    del iteration
    fake.assert_healthy()


@pytest.mark.parametrize("version", ["2.11", "2.14"])
def test_a_failed_capture_leaves_the_process_able_to_capture_again(capturable_on_cpu, monkeypatch, version):
    """A failed capture, then empty_cache() and a second capture (the next job of a sweep in the same process): the
    second one is captured and passes its self-check. Without the unwinding, torch 2.11 would leave the first
    capture counted as under way, and the empty_cache() before the second capture would fail."""
    _, _, _, fake, first, _, _ = emulated(monkeypatch, steps=5, fail=True, version=version)
    assert first.execution()["path"] == "eager"
    torch.cuda.empty_cache()
    assert fake.underway == [] and fake.errors == []
    overrides = tiny_overrides("dcgan", steps=20, **EMULATED)
    r, eager = make_run(overrides)
    fastpath.prepare(r)
    fake.r, fake.eager, fake.fail = r, eager, False
    second = fastpath.GraphedIteration(fake.iteration, r, log, exact=True)
    got = losses(second, 6)
    r_ref, eager_ref = make_run(overrides)
    assert torch.equal(got, losses(prepared_iteration(r_ref, eager_ref), 6))
    assert second.execution() == {"path": "graph", "reason": None, "self_check": "passed, bit for bit",
                                  "eager_iterations": 3}
    del first, second
    fake.assert_healthy()


CORRUPTIONS = {"ema": "G_ema.", "bn": ".running_mean", "sn_u": "._u", "lr": "D."}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS))
def test_the_self_check_catches_a_graph_that_differs_and_falls_back(capturable_on_cpu, monkeypatch, caplog,
                                                                     corrupt):
    """A graph whose first replay leaves the EMA, BatchNorm's running mean or spectral norm's u as they were, or moves
    D 2 % further than the eager step (an lr off by 2 %): the self-check names the tensor in one warning and the run
    goes on eagerly from the eager iteration's state, exactly as an eager run (the tolerance mode catches it too)."""
    with caplog.at_level(logging.INFO, logger="ganbench"):
        got, _, r, fake, iteration, expected, r_ref = emulated(monkeypatch, corrupt=corrupt)
    lines = fast_path_lines(caplog)
    assert len(lines) == 1 and caplog.records[-1].levelno == logging.WARNING, lines
    record = iteration.execution()
    assert record["path"] == "eager" and record["eager_iterations"] == 8
    assert record["reason"].startswith("self-check failed: ") and record["reason"] in lines[0]
    bad = record["reason"].split("failed: ")[1].split(" differs")[0]
    assert CORRUPTIONS[corrupt] in bad and (bad.startswith(CORRUPTIONS[corrupt]) or corrupt not in ("ema", "lr"))
    assert fake.pools == {} and len(fake.freed) == 1  # the rejected graph's pool: released and freed at once
    assert torch.equal(got, expected)
    assert all(torch.equal(a, b) for a, b in zip(weights(r), weights(r_ref)))
    assert all(torch.equal(a, b) for a, b in zip(r.G_ema.state_dict().values(), r_ref.G_ema.state_dict().values()))
    assert [s.last_epoch for s in r.schedulers] == [8, 8]
    del iteration
    fake.assert_healthy()


def test_self_check_tolerance():
    """Bit for bit when exact; otherwise each tensor within SELF_CHECK_RTOL of its own change in the iteration."""
    before = {"w": torch.zeros(1000), "frozen": torch.ones(10), "step": torch.tensor(3)}
    step = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    eager = {"w": step.clone(), "frozen": torch.ones(10), "step": torch.tensor(4)}

    def check(exact=False, **graph):
        return fastpath.compare(before, eager, {**eager, **graph}, exact)

    assert str(check()) == "passed, bit for bit" and str(check(exact=True)) == "passed, bit for bit"
    rounding = step * (1 + 1e-6)
    assert check(w=rounding).first_bad is None and "within tolerance" in str(check(w=rounding))
    assert check(w=rounding, exact=True).first_bad == "w"
    assert check(w=step * 1.02).first_bad == "w"  # an lr off by 2 %
    assert check(w=step * 1.005).first_bad is None  # within 1 %
    assert check(w=torch.zeros(1000)).first_bad == "w"  # a dead update
    assert check(frozen=torch.ones(10) + 1e-6).first_bad == "frozen"  # unchanged by eager: bit for bit
    assert check(step=torch.tensor(5)).first_bad == "step"
    assert check(w=step.double()).first_bad == "w"
    assert str(check(w=step * 1.02)).startswith("failed: w differs (update-relative difference 0.02")


def test_cpu_runs_record_how_they_executed(tmp_path):
    """`ganbench train dataset=grid25 model=mlp steps=20`: metrics.json's execution record reads eager, reason cpu;
    TensorBoard has it as text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ganbench.train import run
    cfg = compose(tiny_overrides("mlp", steps=20, dataset="grid25", log_every=10, sample_every=20, eval_every=20,
                                 ckpt_every=20))
    run(cfg, tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())["execution"]
    assert record == {"path": "eager", "reason": "cpu", "self_check": "not run", "iterations": 20,
                      "eager_iterations": 20, "precision": "fp32", "channels_last": False, "device": "cpu",
                      "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda}
    events = EventAccumulator(str(tmp_path)).Reload()
    assert "execution/text_summary" in events.Tags()["tensors"]


def test_report_shows_each_runs_path_and_says_when_a_sweep_took_different_ones(tmp_path):
    from ganbench import report

    def job(name: str, execution: dict | None) -> None:
        (tmp_path / name).mkdir()
        record = {"step": 10, "status": "completed", "metrics": {"w1": 0.1}, "history": [],
                  **({"execution": execution} if execution else {})}
        (tmp_path / name / "metrics.json").write_text(json.dumps(record))

    job("0_a", {"path": "graph", "reason": None})
    job("1_b", {"path": "eager", "reason": "capture failed: RuntimeError: x"})
    job("2_c", None)
    runs = report.read_sweep(tmp_path)
    assert [r.path for r in runs] == ["graph", "eager (capture failed: RuntimeError: x)", ""]
    text = report.to_markdown(runs, ["w1"], tmp_path, None)
    assert "| path |" in text and "| graph |" in text
    assert "Note: the jobs took different execution paths (1 eager, 1 graph); see the path column." in text
    assert "different execution paths" not in report.to_markdown(runs[:1], ["w1"], tmp_path, None)


# ---------------------------------------------------------------------------------------------------- CUDA only

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LOSSES = methods.names("loss")  # every method conf/ offers
CONSTRAINTS = methods.names("constraint")
GPU_STEPS = 20
TF32, BF16 = 2e-2, 5e-2


def graphed(overrides: list[str], steps: int = GPU_STEPS):
    """Losses of the first ``steps`` iterations through make_iteration with fast=true, and the iteration."""
    r, eager = make_run(overrides + ["fast=true"], device="cuda")
    iteration = fastpath.make_iteration(r, eager, r.cfg, log)
    return losses(iteration, steps), iteration


def eager_same_arithmetic(overrides: list[str], steps: int = GPU_STEPS) -> torch.Tensor:
    """The graph path without the capture: capturable optimizers, tensor lr, schedulers after the iteration."""
    r, eager = make_run(overrides + ["fast=true"], device="cuda")
    if r.cfg.channels_last:
        fastpath.to_channels_last(r)
    if r.cfg.precision == "bf16":
        eager = fastpath.bf16_autocast(eager)
    return losses(prepared_iteration(r, eager), steps)


def eager_fast_false(overrides: list[str], steps: int = GPU_STEPS) -> torch.Tensor:
    """The eager loop `ganbench train fast=false` runs (the optimizers as Hydra built them)."""
    r, eager = make_run(overrides + ["fast=false"], device="cuda")
    return losses(fastpath.make_iteration(r, eager, r.cfg, log), steps)


def assert_captured(iteration) -> None:
    assert fastpath.describe(iteration).startswith("CUDA graph ("), fastpath.describe(iteration)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_graph_agrees_with_eager_for_20_steps(deterministic_cudnn, loss, constraint):
    """Every pair is captured whole, and its first 20 losses match the eager iteration's (TF32 tolerance).

    The eager side runs the same optimizer arithmetic (capturable Adam), so that the graph itself is what is
    compared: the same kernels and the same random stream (a replay advances the philox offset as the eager kernels
    do), hence equal up to rounding. Against the fast=false loop (plain Adam) the first 10 steps must agree too.
    Later steps are not compared with it: a GAN's losses amplify float32 rounding chaotically. On the CPU, plain
    vs capturable Adam alone puts 7 of the 49 tiny pairs more than 2e-2 apart by step 50 (under 5e-3 at step 10).
    """
    overrides = tiny_overrides("dcgan", steps=100, loss=loss, constraint=constraint)
    got, iteration = graphed(overrides)
    assert_captured(iteration)
    expected = eager_same_arithmetic(overrides)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=TF32, atol=TF32)
    torch.testing.assert_close(got[:10], eager_fast_false(overrides, 10), rtol=TF32, atol=TF32)


SETTINGS = {
    "mlp-grid25-schedule-ema-rmsprop": tiny_overrides("mlp", steps=100, dataset="grid25", loss="wgan",
                                                      constraint="clip", optim="rmsprop", n_dis=3,
                                                      ema_decay=0.99, **{"optim.decay": "linear"}),
    "sngan_resnet-hinge-sn-ndis5-ema": tiny_overrides("sngan_resnet", steps=100, n_dis=5, ema_decay=0.999),
    "sngan_cnn-wgan_gp-schedule-gbatch": tiny_overrides("sngan_cnn", steps=100, loss="wgan_gp", constraint="none",
                                                        g_batch_size=16, **{"optim.decay": "linear"}),
    "dcgan_small-hinge-sn-b64 (default job)": ["model=dcgan_small", "batch_size=64", "steps=100"],
}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", list(SETTINGS))
def test_graph_agrees_with_eager_other_models_and_schedules(deterministic_cudnn, name):
    got, iteration = graphed(SETTINGS[name])
    assert_captured(iteration)
    torch.testing.assert_close(got, eager_same_arithmetic(SETTINGS[name]), rtol=TF32, atol=TF32)
    torch.testing.assert_close(got[:10], eager_fast_false(SETTINGS[name], 10), rtol=TF32, atol=TF32)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("pair", [["loss=hinge", "constraint=sn"], ["loss=sgan", "constraint=gn"]],
                         ids=["hinge-sn", "sgan-gn"])
def test_bf16_channels_last_graph_agrees_with_eager_bf16(deterministic_cudnn, pair):
    overrides = tiny_overrides("dcgan", steps=100) + pair + ["precision=bf16", "channels_last=true"]
    got, iteration = graphed(overrides)
    assert_captured(iteration)
    torch.testing.assert_close(got, eager_same_arithmetic(overrides), rtol=BF16, atol=BF16)
    torch.testing.assert_close(got[:10], eager_fast_false(overrides, 10), rtol=BF16, atol=BF16)


@pytest.mark.gpu
@requires_cuda
def test_a_graphed_runs_checkpoint_resumes_eagerly_on_the_cpu(tmp_path):
    overrides = tiny_overrides("dcgan", steps=100, **{"optim.decay": "linear"})
    r, eager = make_run(overrides, device="cuda")
    iteration = fastpath.make_iteration(r, eager, r.cfg, log)
    losses(iteration, 10)
    assert_captured(iteration)
    r.step = 10
    checkpoint.save(r.state(), tmp_path)
    r_cpu, eager_cpu = make_run(overrides, device="cpu")
    r_cpu.restore(checkpoint.load(tmp_path / "last.pt"), tmp_path / "last.pt")
    state = r_cpu.opt_g.state_dict()
    assert all(float(s["step"]) == 10 for s in state["state"].values())
    assert r_cpu.schedulers[0].last_epoch == 10
    assert torch.isfinite(losses(eager_cpu, 2)).all()


@pytest.mark.gpu
@requires_cuda
def test_graph_reads_the_instance_noise_sigma_the_host_sets(deterministic_cudnn):
    """Instance noise: the loop fills σ in place before each call, as `ganbench train` does; the graph must read the
    live value, not the one at capture (σ reaches 0 at step 10 here, inside the 20 compared steps)."""
    overrides = tiny_overrides("mlp", steps=100, dataset="grid25", loss="ganqp", constraint="none",
                               **{"instance_noise.std": 0.5, "instance_noise.until": 0.1})

    def trace(make_iteration):
        r, eager = make_run(overrides + ["fast=true"], device="cuda")
        iteration, out = make_iteration(r, eager), []
        for step in range(GPU_STEPS):
            r.noise.at(step)
            d, g = iteration()
            out.append(torch.stack([d.total.detach().clone(), g.total.detach().clone()]))
        return torch.stack(out), iteration

    got, iteration = trace(lambda r, eager: fastpath.make_iteration(r, eager, r.cfg, log))
    assert_captured(iteration)
    expected, _ = trace(prepared_iteration)
    torch.testing.assert_close(got, expected, rtol=TF32, atol=TF32)
