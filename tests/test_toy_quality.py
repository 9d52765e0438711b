"""Toy 2D quality with the documented preset: a well-constrained D covers all of grid25 with high-quality samples."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, compose, tiny_overrides
from omegaconf import OmegaConf

from ganbench.train import run


@pytest.mark.slow
def test_hinge_sn_covers_grid25(tmp_path):
    """grid25_hinge_sn, seed 0: 25/25 modes and ≥ 90% high-quality samples (PacGAN's bar), 10,000 steps.

    The other grid25 pairs' presets take 6–21 minutes a run: scripts/toy_bar.py checks them, not the suite.
    """
    cfg = compose(["experiment=grid25_hinge_sn", "device=cpu", "cpu_threads=1", "progress=false",
                   "ckpt_every=10000", "sample_every=10000", "log_every=2000", "eval_every=10000"])
    pair = (cfg.loss._target_, cfg.constraint._target_)
    assert pair == ("ganbench.losses.Hinge", "ganbench.constraints.SpectralNorm")
    metrics = run(cfg, tmp_path)
    assert metrics["modes"] == 25
    assert metrics["hq"] >= 0.90  # measured 0.947 (with 1 thread as with 2)
    assert metrics["w1"] < 0.3  # measured 0.212


@pytest.mark.slow
def test_wgan_gp_covers_ring8(tmp_path):
    """ring8_wgan_gp, seed 0, 5,000 steps: 8/8 modes and ≥ 90% of samples within 3σ = 0.06 of a mode."""
    cfg = compose(["experiment=ring8_wgan_gp", "device=cpu", "cpu_threads=1", "progress=false",
                   "ckpt_every=5000", "sample_every=5000", "log_every=1000", "eval_every=5000"])
    metrics = run(cfg, tmp_path)
    assert metrics["modes"] == 8
    assert metrics["hq"] >= 0.90  # measured 0.948 with 1 thread as with 2 (0.928 with λ = 10, ring8_study)
    assert metrics["w1"] < 0.2  # measured 0.102


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toy_bar():
    return _script("toy_bar")


def _record_runs(toy_bar, monkeypatch) -> list:
    """The command lines of the runs ``toy_bar`` starts from now on (they still run)."""
    calls = []
    real_popen = toy_bar.subprocess.Popen
    monkeypatch.setattr(toy_bar.subprocess, "Popen", lambda cmd, **kw: calls.append(cmd) or real_popen(cmd, **kw))
    return calls


def _table_rows(out: str) -> list[str]:
    """toy_bar's per-run lines (those that say whether the run meets the bar) in its output ``out``."""
    return [line for line in out.splitlines() if line.endswith(("meets", "misses"))]


def test_toy_bar_summary_counts_seeds():
    """Seeds meeting the bar per pair, mean ± std over the seeds that ran; a failed run counts against the pair."""
    toy_bar = _toy_bar()
    ok = {"modes": 25, "hq": 0.95, "w1": 0.2}
    rows = [("grid25", "a", 25, ok), ("grid25", "a", 25, {"modes": 24, "hq": 0.95, "w1": 0.4}),
            ("grid25", "a", 25, ok), ("grid25", "a", 25, ok), ("grid25", "a", 25, {**ok, "hq": 0.85}),
            ("ring8", "b", 8, {"modes": 8, "hq": 0.9, "w1": 0.1}), ("ring8", "b", 8, {"error": "exit 1"})]
    a, b = toy_bar.summarize(rows)
    assert (a["met"], a["n"], a["need"], a["ok"], a["errors"]) == (3, 5, 4, False, 0)
    assert a["hq"] == "0.930 ± 0.045" and a["w1"] == "0.240 ± 0.089" and a["modes_mean"] == 24.8
    assert (b["met"], b["n"], b["need"], b["ok"], b["errors"]) == (1, 2, 2, False, 1)
    assert b["hq"] == "0.900 ± 0.000"
    assert toy_bar.summarize(rows[:4], need=3)[0]["ok"]
    assert toy_bar.DEFAULT_SEEDS == [0, 1, 2, 3, 4]


def test_toy_bar_runs_the_checks_and_fails_short_runs(tmp_path, capsys, monkeypatch):
    """scripts/toy_bar.py with 30 steps, one seed: real runs, one line each, none meets the bar (exit 1)."""
    code = _toy_bar().main(["--only", "ring8", "--seeds", "0", "--steps", "30", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    table = _table_rows(out)
    assert [(w[0], w[2], w[-1]) for w in map(str.split, table)] == [("ring8", "0", "misses")] * 4, out
    # each run's line also reached stderr as the run ended, counted k of 4
    progress = [line for line in err.splitlines() if line.startswith("toy_bar: [")]
    assert sorted(line.split("] ", 1)[0] for line in progress) == [f"toy_bar: [{k}/4" for k in range(1, 5)], err
    assert sorted(line.split("] ", 1)[1] for line in progress) == sorted(table), err
    summary = [line for line in out.splitlines() if "meet the bar (need 1)" in line]
    assert len(summary) == 4 and all("0/1 meet the bar" in line and line.endswith("BELOW") for line in summary), out
    assert "0/4 pairs meet the bar in enough seeds" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ring8_ganqp_none_seed0", "ring8_hinge_sn_seed0", "ring8_wgan_gn_seed0", "ring8_wgan_gp_seed0"]

    # --reuse reads those finished runs instead of training again; a changed override trains anew.
    toy_bar = _toy_bar()
    calls = _record_runs(toy_bar, monkeypatch)
    assert toy_bar.main(["--only", "ring8", "--seeds", "0", "--steps", "30", "--out", str(tmp_path), "--reuse"]) == 1
    assert calls == [] and capsys.readouterr().out.count("misses") == 4
    toy_bar.main(["--only", "ring8", "--seeds", "0", "--steps", "20", "--out", str(tmp_path), "--reuse"])
    assert len(calls) == 4


def test_toy_bar_stops_its_runs_on_sigterm_and_resumes_them(tmp_path, capsys, monkeypatch):
    """SIGTERM to scripts/toy_bar.py reaches its run, which saves a checkpoint and stops; toy_bar prints what it has
    and exits 143. ``--reuse`` then resumes that run from its checkpoint (not from step 0) to its last step."""
    argv = ["--only", "ring8", "--pair", "hinge+sn", "--seeds", "0", "--steps", "800", "--out", str(tmp_path)]
    bar = subprocess.Popen([sys.executable, str(REPO / "scripts" / "toy_bar.py"), *argv], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ring8_hinge_sn_seed0" / "metrics.json"
    deadline = time.time() + 300
    while not metrics.exists():  # written first at the step-500 evaluation, inside the loop
        assert bar.poll() is None and time.time() < deadline, bar.communicate()
        time.sleep(0.1)
    bar.send_signal(signal.SIGTERM)
    out, err = bar.communicate(timeout=300)
    assert bar.returncode == 143, (out, err)
    assert "toy_bar: SIGTERM: stopping 1 run(s)" in err
    assert "ERROR exit 143" in out and "stopped by SIGTERM: run again with --reuse" in out, out
    stopped = json.loads(metrics.read_text())
    assert stopped["status"] == "interrupted" and 500 <= stopped["step"] < 800, stopped["status"]
    assert (metrics.parent / "checkpoints" / "last.pt").is_file()

    toy_bar = _toy_bar()
    calls = _record_runs(toy_bar, monkeypatch)
    toy_bar.main([*argv, "--reuse"])
    assert len(calls) == 1 and calls[0][-1] == f"resume={metrics.parent}", calls
    done = json.loads(metrics.read_text())
    assert done["status"] == "completed" and done["step"] == 800
    assert [h["step"] for h in done["history"]] == [500, 800]  # the step-500 evaluation is the first run's
    rows = _table_rows(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0].split()[:3] == ["ring8", "hinge+sn", "0"], rows


def test_toy_modes_diagnoses_a_run_with_its_own_constraint(tmp_path, capsys):
    """scripts/toy_modes.py on a short ring8 wgan + gn run: one row per mode, mass shares summing to 1, the critic
    the loss sees (D̂ of GN, |D̂| < 1), flags as documented; an image run is refused in one line."""
    cfg = compose(tiny_overrides("mlp", steps=4, dataset="ring8", loss="wgan", constraint="gn"))
    run_dir = tmp_path / "run"
    run(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    rows = _script("toy_modes").diagnose(run_dir, n=2000)
    assert len(rows) == 8
    assert sum(r["mass"] for r in rows) == pytest.approx(1.0)
    assert all(r["hq"] <= round(r["mass"] * 2000) for r in rows)
    assert all(r["starved"] == (r["mass"] < 0.25 / 8) for r in rows)
    seen = [r for r in rows if r["mass"] > 0]
    assert all(abs(r["d_real"]) < 1 and abs(r["d_fake"]) < 1 and -1 <= r["cos"] <= 1 for r in seen)
    assert all(r["off"] == (r["dist"] > 3 * 0.02) for r in seen)  # ring8's σ = 0.02
    assert _script("toy_modes").main([str(run_dir), "--n", "500"]) == 0
    assert "starved" in capsys.readouterr().out

    image_run = tmp_path / "image"
    cfg = compose(tiny_overrides("mlp", steps=2))
    run(cfg, image_run)
    (image_run / ".hydra").mkdir()
    OmegaConf.save(cfg, image_run / ".hydra" / "config.yaml")
    assert _script("toy_modes").main([str(image_run)]) == 2
    assert "is not a 2D toy run" in capsys.readouterr().err
