"""The training loop end to end: every loss × constraint pair, logging, checkpoints, resume, NaN, equivalences."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import compose, read_metrics, tiny_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ganbench import checkpoint, methods, train
from ganbench.build import build
from ganbench.constraints import NoConstraint
from ganbench.errors import GanbenchError
from ganbench.losses import GANQP, WGAN, LossTerms
from ganbench.step import InstanceNoise, d_step, g_step
from ganbench.train import run

LOSSES = methods.names("loss")  # every method conf/ offers: a new loss or constraint YAML is tested here
CONSTRAINTS = methods.names("constraint")


def scalars(run_dir) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def image_tags(run_dir) -> list[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def assert_run_ok(run_dir, steps: int):
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["step"] == steps
    tags = scalars(run_dir)
    for tag in ("loss/d", "loss/g", "lipschitz/max", "lipschitz/real/mean", "lipschitz/fake/max",
                "lipschitz/interp/mean", "perf/steps_per_s"):
        assert tag in tags, tag
    for tag in ("loss/d", "loss/g"):
        assert [s for s, _ in tags[tag]] == list(range(1, steps + 1))
        assert all(math.isfinite(v) for _, v in tags[tag]), (tag, tags[tag])
    assert "samples" in image_tags(run_dir)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in (run_dir / "samples").iterdir())[-1] == f"step_{steps:07d}.png"
    return record, tags


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_grid25(tmp_path, loss, constraint):
    cfg = compose(tiny_overrides("mlp", steps=3, dataset="grid25", loss=loss, constraint=constraint))
    metrics = run(cfg, tmp_path)
    record, tags = assert_run_ok(tmp_path, 3)
    assert set(metrics) == {"modes", "hq", "w1"} and record["metrics"] == metrics
    assert isinstance(metrics["modes"], int) and 0 <= metrics["modes"] <= 25
    assert 0.0 <= metrics["hq"] <= 1.0 and metrics["w1"] > 0
    # Every penalty that runs is logged, and only those: the loss's own unless the constraint replaces it (GN and
    # GraN normalise the critic), then the constraint's (test_constraints checks which run for every pair).
    r = build(cfg, torch.device("cpu"))
    ran = {p.name for p in r.constraint.run_penalties(r.loss)}
    assert {t.split("/")[1] for t in tags if t.startswith("penalty/")} == ran
    assert all(f"grad_norm/{name}" in tags for name in ran & {"gp", "r1", "div"})
    known = {("wgan_gp", "none"): {"gp"}, ("wgan_gp", "gn"): set(), ("wgan_div", "gran"): set(),
             ("wgan_div", "r1"): {"div", "r1"}, ("hinge", "gp"): {"gp"}, ("sgan", "sn"): set()}
    assert ran == known.get((loss, constraint), ran)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_pair_on_mnist_mini(tmp_path, loss, constraint):
    cfg = compose(tiny_overrides("dcgan", steps=2, loss=loss, constraint=constraint))
    assert cfg.dataset._target_.endswith("mnist_mini")
    metrics = run(cfg, tmp_path)
    record, _ = assert_run_ok(tmp_path, 2)
    assert math.isfinite(metrics["fd_classifier"]) and metrics["fd_classifier"] > 0
    assert record["protocol"]["fd_classifier"]["num_fake"] == 64


def _weights(run_dir):
    return checkpoint.load(run_dir / "checkpoints" / "last.pt")


def test_wgan_gp_equals_wgan_plus_gp(tmp_path):
    toy = {"steps": 4, "dataset": "grid25"}
    a = run(compose(tiny_overrides("mlp", **toy, loss="wgan_gp", constraint="none")), tmp_path / "a")
    b = run(compose(tiny_overrides("mlp", **toy, loss="wgan", constraint="gp")), tmp_path / "b")
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    for net in ("G", "D"):
        for k in wa[net]:
            torch.testing.assert_close(wa[net][k], wb[net][k], rtol=0, atol=0)
    assert a == b


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    over = tiny_overrides("dcgan", steps=3)
    run(compose(over), tmp_path / "a")
    run(compose(over), tmp_path / "b")
    run(compose(over + ["seed=1"]), tmp_path / "c")
    wa, wb, wc = (_weights(tmp_path / n)["G"] for n in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("model,dataset", [("dcgan", "mnist_mini"), ("mlp", "ring8")])
def test_resume_is_exact_and_logs_each_step_once(tmp_path, model, dataset):
    over = tiny_overrides(model, dataset=dataset, ema_decay=0.9)
    run(compose(over + ["steps=6"]), tmp_path / "straight")
    # A run that stopped at step 4 (checkpoint at 4), then resumed to 6 from its directory.
    run(compose(over + ["steps=4"]), tmp_path / "resumed")
    run(compose(over + ["steps=6", f"resume={tmp_path / 'resumed'}"]), tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a["step"] == b["step"] == 6
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    ta, tb = scalars(tmp_path / "straight"), scalars(tmp_path / "resumed")
    assert [s for s, _ in tb["loss/d"]] == list(range(1, 7))
    assert ta["loss/d"] == tb["loss/d"] and ta["loss/g"] == tb["loss/g"]
    assert read_metrics(tmp_path / "straight")["metrics"] == read_metrics(tmp_path / "resumed")["metrics"]


def test_resume_drops_events_written_after_the_checkpoint(tmp_path):
    """A crash after step 5 with the checkpoint at 4: steps logged past 4 are purged on resume, none doubled."""
    over = tiny_overrides("mlp", dataset="grid25", ckpt_every=4)
    run(compose(over + ["steps=4"]), tmp_path)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    saved = ckpt.read_bytes()
    run(compose(over + ["steps=5", f"resume={tmp_path}"]), tmp_path)  # logs step 5 ...
    ckpt.write_bytes(saved)  # ... then "crashes" before its checkpoint: back to step 4
    run(compose(over + ["steps=7", f"resume={tmp_path}"]), tmp_path)
    assert [s for s, _ in scalars(tmp_path)["loss/d"]] == list(range(1, 8))


def test_resume_with_other_loss_is_refused(tmp_path):
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    run(compose(over), tmp_path)
    with pytest.raises(GanbenchError, match="loss._target_"):
        run(compose(over + ["loss=wgan", "steps=4", f"resume={tmp_path}"]), tmp_path / "other")


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    run(compose(over), tmp_path)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GanbenchError, match="corrupt or truncated"):
        run(compose(over + ["steps=4", f"resume={tmp_path}"]), tmp_path)


class NaNAfter(WGAN):
    """A WGAN whose critic loss turns NaN from the 4th D step on (to test divergence handling)."""

    calls = 0

    def d_loss(self, d_real, d_fake, real, fake):
        NaNAfter.calls += 1
        terms = super().d_loss(d_real, d_fake, real, fake)
        if NaNAfter.calls >= 4:
            return LossTerms(terms.total * float("nan"), terms.parts)
        return terms


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    NaNAfter.calls = 0
    over = tiny_overrides("mlp", dataset="grid25", steps=10, log_every=3, ckpt_every=2)
    cfg = compose(over + ["loss=wgan", "loss._target_=test_train.NaNAfter"])
    with pytest.raises(GanbenchError, match=r"non-finite loss appeared at step 4 .*last good checkpoint \(step 2\)"):
        run(cfg, tmp_path)
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["D"].values())
    assert read_metrics(tmp_path)["status"] == "diverged"


def test_metrics_json_layout(tmp_path):
    run(compose(tiny_overrides("mlp", dataset="ring8", steps=4)), tmp_path)
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert set(record) >= {"step", "metrics", "protocol", "wall_time_s", "config", "status", "history"}
    assert record["config"]["loss"]["_target_"] == "ganbench.losses.Hinge"
    assert [h["step"] for h in record["history"]] == [2, 4]
    assert record["protocol"]["toy"]["samples_fake"] == 200


def _lr_trace(cfg) -> list[list[float]]:
    """[lr_G, lr_D] before each of cfg.steps scheduler steps and after the last."""
    r = build(cfg, torch.device("cpu"))
    lrs = []
    for _ in range(cfg.steps):
        lrs.append([o.param_groups[0]["lr"] for o in (r.opt_g, r.opt_d)])
        for s in r.schedulers:
            s.step()
    return lrs + [[o.param_groups[0]["lr"] for o in (r.opt_g, r.opt_d)]]


@pytest.mark.parametrize("decay_to", [0.0, 0.1])
def test_linear_decay_ends_at_decay_to(decay_to):
    """optim.decay=linear: both lrs fall in a straight line from their base value to decay_to × base at the last step
    (0.0, the default, is the schedule the toy presets were tuned with: lr → 0)."""
    cfg = compose(tiny_overrides("mlp", steps=10, **{"optim.decay": "linear", "optim.decay_to": decay_to,
                                                    "optim.lr_g": 1e-3, "optim.lr_d": 2e-3}))
    lrs = _lr_trace(cfg)
    expected = [base * (1 - (1 - decay_to) * i / 10) for i in range(11) for base in (1e-3, 2e-3)]
    assert sum(lrs, []) == pytest.approx(expected, abs=1e-15)
    assert lrs[-1] == pytest.approx([1e-3 * decay_to, 2e-3 * decay_to], abs=1e-15)


@pytest.mark.parametrize("decay", ["none", "linear"])
def test_warmup_rises_linearly_then_follows_the_decay(decay):
    """optim.warmup=4: both lrs are 1/4, 2/4, 3/4 of the schedule's value at steps 0-2 and the schedule from step 3;
    with decay=linear (to 0.1) the two multiply."""
    cfg = compose(tiny_overrides("mlp", steps=10, **{"optim.decay": decay, "optim.decay_to": 0.1, "optim.warmup": 4,
                                                    "optim.lr_g": 1e-3, "optim.lr_d": 2e-3}))
    decayed = [1 - 0.9 * i / 10 if decay == "linear" else 1.0 for i in range(11)]
    rise = [0.25, 0.5, 0.75] + [1.0] * 8
    expected = [[base * rise[i] * decayed[i] for base in (1e-3, 2e-3)] for i in range(11)]
    lrs = _lr_trace(cfg)
    for got, want in zip(lrs, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-15)


def test_no_warmup_and_no_decay_means_no_schedulers():
    cfg = compose(tiny_overrides("mlp", steps=4, **{"optim.decay": "none", "optim.warmup": 0}))
    r = build(cfg, torch.device("cpu"))
    assert r.schedulers == []


def test_instance_noise_anneals_linearly_to_zero_at_until():
    """σ_t = std·(1 − t/end), end = round(until·steps), then 0 to the last step; at() writes it into the tensor."""
    noise = InstanceNoise(std=0.5, until=0.6, steps=10, device=torch.device("cpu"))
    assert [noise.sigma(t) for t in range(11)] == pytest.approx(
        [0.5, 0.5 * 5 / 6, 0.5 * 4 / 6, 0.25, 0.5 * 2 / 6, 0.5 / 6, 0, 0, 0, 0, 0], abs=1e-15)
    noise.at(3)
    assert noise.std.item() == pytest.approx(0.25, abs=1e-7)
    assert InstanceNoise(std=0.5, until=1.0, steps=10, device=torch.device("cpu")).sigma(9) == pytest.approx(0.05)


class _Seen(nn.Module):
    """Records the inputs D was called with: a linear critic on 2D points."""

    def __init__(self):
        super().__init__()
        self.lin, self.inputs = nn.Linear(2, 1), []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.lin(x).squeeze(1)


@pytest.mark.parametrize("loss_cls", [WGAN, GANQP])
def test_instance_noise_reaches_every_input_of_d(loss_cls):
    """D's inputs in the D step and the G step (GAN-QP: its real batch too) are the clean batches plus σ·N(0, I):
    4,096 points, so the residual's mean and std are within 0.1σ of 0 and σ. Without noise D sees them unchanged."""
    torch.manual_seed(0)
    G, n, sigma = nn.Linear(2, 2), 4096, 0.3
    real, z = torch.randn(n, 2) * 2, torch.randn(n, 2)
    noise = InstanceNoise(std=sigma, until=1.0, steps=10, device=torch.device("cpu"))
    loss = loss_cls()
    for with_noise in (False, True):
        D = _Seen()
        opt_d, opt_g = torch.optim.SGD(D.parameters(), lr=0.0), torch.optim.SGD(G.parameters(), lr=0.0)
        d_step(G, D, D, loss, (), NoConstraint(), opt_d, real, z, noise if with_noise else None)
        g_step(G, D, D, loss, opt_g, z, real if loss.g_uses_real else None, noise if with_noise else None)
        assert G.weight.grad is not None and G.weight.grad.abs().sum() > 0  # the G step's gradient reaches G
        with torch.no_grad():
            clean = [real, G(z)] + [G(z)] + ([real] if loss.g_uses_real else [])
        assert len(D.inputs) == len(clean)
        for seen, x in zip(D.inputs, clean):
            residual = seen - x
            if not with_noise:
                assert torch.equal(residual, torch.zeros_like(x))
            else:
                assert abs(residual.mean().item()) < 0.1 * sigma
                assert abs(residual.std().item() - sigma) < 0.1 * sigma


def test_instance_noise_is_off_by_default_and_a_noised_run_resumes_exactly(tmp_path, monkeypatch):
    """std 0 builds no noise (the default run's random stream is untouched). With noise, an 8-step run that dies in
    step 5 (checkpoint at 4) and is resumed equals the straight run bit for bit: σ follows the step and the steps of
    the config, the RNG state is in the checkpoint."""
    assert build(compose(tiny_overrides("mlp", dataset="ring8")), torch.device("cpu")).noise is None
    over = tiny_overrides("mlp", dataset="ring8", steps=8, **{"instance_noise.std": 0.5, "instance_noise.until": 0.5})
    run(compose(over), tmp_path / "straight")
    d_step_calls = {"n": 0}

    def dies_in_step_5(*args, **kwargs):
        d_step_calls["n"] += 1
        if d_step_calls["n"] == 5:
            raise RuntimeError("killed in step 5")
        return d_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train, "d_step", dies_in_step_5)
        with pytest.raises(RuntimeError, match="killed in step 5"):
            run(compose(over), tmp_path / "resumed")
    assert read_metrics(tmp_path / "resumed")["step"] == 4
    run(compose(over + [f"resume={tmp_path / 'resumed'}"]), tmp_path / "resumed")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for net in ("G", "D"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), (net, k)
    assert scalars(tmp_path / "straight")["loss/d"] == scalars(tmp_path / "resumed")["loss/d"]
    run(compose(tiny_overrides("mlp", dataset="ring8", steps=8)), tmp_path / "clean")
    assert scalars(tmp_path / "clean")["loss/d"] != scalars(tmp_path / "straight")["loss/d"]
