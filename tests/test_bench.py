"""scripts/bench_throughput.py runs on the CPU and prints both loops and their ratio (no timing asserted)."""

from __future__ import annotations

import importlib.util

from conftest import REPO


def test_bench_throughput_prints_the_ratio(capsys):
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--iters", "1", "--warmup", "1", "device=cpu", "batch_size=8", "model.generator.ch=8",
                "model.discriminator.ch=8", "loss=wgan_gp", "constraint=none"])
    out = capsys.readouterr().out
    assert "ganbench " in out and "reference " in out and "ratio ganbench/reference:" in out
