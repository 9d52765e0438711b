"""`ganbench bench` on the CPU: both loops run and the ratio line is printed (no timing is asserted); bad input is
one line; and scripts/toy_bar.py runs its checks."""

from __future__ import annotations

import pytest
import torch
from conftest import compose, run_cli, tiny_overrides

from ganbench import bench, cli


def bench_args(model: str = "dcgan_small", **extra) -> list[str]:
    return ["bench", "--warmup", "1", "--iters", "1", *tiny_overrides(model, **extra)]


def test_bench_prints_both_loops_and_the_ratio_on_the_cpu(tmp_cwd):
    """The bench as a user runs it (a fresh process): loss=hinge constraint=sn model=dcgan_small."""
    result = run_cli(bench_args(loss="hinge", constraint="sn"), cwd=tmp_cwd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ganbench bench on cpu") and "loss Hinge, constraint SpectralNorm" in lines[0]
    ours = next(line for line in lines if line.startswith("ganbench   "))
    theirs = next(line for line in lines if line.startswith("reference  "))
    assert "G-steps/s" in ours and "D images/s" in ours and "peak n/a" in ours and "fast path is CUDA only" in ours
    assert "G-steps/s" in theirs and "D images/s" in theirs
    assert lines[-1].startswith("ratio ganbench/reference: ") and lines[-1].endswith(
        "x G-steps/s, peak memory n/a on the CPU"), lines[-1]
    float(lines[-1].split(": ")[1].split("x")[0])


@pytest.mark.parametrize("pair", [
    {"loss": "wgan_gp", "constraint": "none", "ema_decay": 0.9, "optim.decay": "linear"},
    {"loss": "sgan", "constraint": "gn", "n_dis": 2, "g_batch_size": 4},
    {"loss": "wgan", "constraint": "gp", "model": "mlp", "dataset": "grid25"},
], ids=["wgan_gp-ema-decay", "sgan-gn-ndis2", "wgan-gp-mlp-grid25"])
def test_bench_reference_pairs_run(capsys, pair):
    pair = dict(pair)
    model = pair.pop("model", "dcgan_small")
    assert cli.main(bench_args(model, **pair)) == 0
    out = capsys.readouterr().out
    assert "reference  " in out and "ratio ganbench/reference: " in out


@pytest.mark.parametrize("std", [0.0, 0.5])
def test_the_reference_loop_noises_d_inputs_as_ganbench_does(monkeypatch, capsys, std):
    """With instance_noise.std = σ the reference's D sees real + σε and fake + σε in the D steps and fake + σε in the
    G step, σ held (the data and G's output are pinned to 0 here, so D's inputs are the noise itself); without, the
    batches themselves. The bench's header says so."""
    cfg = compose(tiny_overrides("mlp", dataset="grid25", loss="wgan", constraint="none", batch_size=4096, n_dis=1,
                                 **{"instance_noise.std": std}))
    ref = bench.ReferenceLoop(cfg, torch.device("cpu"), "wgan", "none")
    monkeypatch.setattr(ref.dataset, "sample", lambda n: torch.zeros(n, 2))
    monkeypatch.setattr(ref.G, "forward", lambda z: torch.zeros(len(z), 2))
    seen, critic = [], ref.critic
    monkeypatch.setattr(ref, "critic", lambda x: seen.append(x.detach()) or critic(x))
    ref()
    assert [x.shape for x in seen] == [(4096, 2)] * 3  # D step: real, fake; G step: fake
    for x in seen:
        if std:
            assert abs(x.mean().item()) < 0.03 and x.std().item() == pytest.approx(std, rel=0.05)
        else:
            assert not x.any()
    bench.print_header(cfg, torch.device("cpu"))
    header = capsys.readouterr().out
    assert ("instance noise σ 0.5 (held)" in header) if std else ("instance noise" not in header)


def test_bench_times_ganbench_alone_where_the_reference_has_no_such_pair(capsys):
    assert cli.main(bench_args(loss="ganqp", constraint="r1")) == 0
    out = capsys.readouterr().out
    assert "ganbench   " in out and "reference  none for loss GANQP with constraint R1Constraint" in out
    assert not any(line.startswith("ratio ") for line in out.splitlines())


@pytest.mark.parametrize("args, message", [
    (["--iters", "0"], "--iters >= 1"),
    (["--warmup", "x"], "invalid int value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["stray"], "'stray' is neither an option nor a KEY=VALUE override"),
    (["loss=nope"], "unknown loss 'nope'"),
    (["no_such_key=1"], "no_such_key"),
    (["batch_size=0"], "batch_size must be a positive integer"),
    (["resume=auto"], "resume= overrides make no sense"),
])
def test_bench_bad_input_is_one_line_and_a_nonzero_exit(capsys, args, message):
    assert cli.main(["bench", *args]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ganbench: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
