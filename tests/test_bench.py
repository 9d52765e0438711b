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


def test_toy_bar_runs_the_checks_and_fails_short_runs(tmp_path, capsys):
    """scripts/toy_bar.py with 30 steps: real runs, one line each, and every one FAILs the bar (exit 1)."""
    spec = importlib.util.spec_from_file_location("toy_bar", REPO / "scripts" / "toy_bar.py")
    toy_bar = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy_bar)
    code = toy_bar.main(["--only", "ring8", "--steps", "30", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith("ring8 ")]
    assert len(lines) == 4 and all(line.endswith("FAIL") for line in lines), out
    assert "0/4 runs meet the bar" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ring8_ganqp_none_seed0", "ring8_hinge_sn_seed0", "ring8_wgan_gn_seed0", "ring8_wgan_gp_seed0"]
    assert all((p / "metrics.json").is_file() for p in tmp_path.iterdir())
