"""`ganbench eval RUN_DIR` and `ganbench sample RUN_DIR` on a run directory built here (config + checkpoint)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import compose, read_metrics, run_cli, tiny_overrides
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from test_classifier_metric import _use_metrics_cache, metrics_cache  # noqa: F401  (shared session cache)

from ganbench import checkpoint, evaluate, rundir
from ganbench.errors import GanbenchError


def make_run(run_dir, overrides=None, ema: bool = False, step: int = 7, metrics: dict | None = None):
    """A run directory as `ganbench train` leaves it: .hydra/config.yaml, checkpoints/last.pt, metrics.json."""
    cfg = compose(tiny_overrides("dcgan", **(overrides or {})))
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    G = instantiate(cfg.model.generator, out_shape=(1, 32, 32))
    G_ema = None
    if ema:  # an EMA generator that differs from G: every output is -1 (tanh of a huge negative bias)
        G_ema = {k: v.clone() for k, v in G.state_dict().items()}
        last_bias = [k for k in G_ema if k.endswith("bias")][-1]
        G_ema[last_bias].fill_(-1e4)
    checkpoint.save({"step": step, "G": G.state_dict(), "G_ema": G_ema}, run_dir / "checkpoints")
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return cfg


def test_eval_merges_metrics_and_protocol_into_metrics_json(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, metrics={"step": 7, "status": "completed", "metrics": {"old": 1.0},
                           "protocol": {"old": {"x": 1}}, "history": [1, 2]})
    assert evaluate.eval_main([str(run), "metrics.num_fake=300", "metrics.batch=128", "device=cpu"]) == 0
    record = read_metrics(run)
    assert record["status"] == "completed" and record["history"] == [1, 2]  # the rest is kept
    assert record["metrics"]["old"] == 1.0 and math.isfinite(record["metrics"]["fd_classifier"])
    p = record["protocol"]["fd_classifier"]
    assert p["num_fake"] == 300 and p["checkpoint_step"] == 7 and p["generator"] == "G"
    assert p["checkpoint"].endswith("last.pt") and p["real"] == "mnist_mini-train-32"
    out = capsys.readouterr().out
    assert "fd_classifier" in out and "step 7" in out
    # same checkpoint, same seed -> same fakes -> same number
    first = record["metrics"]["fd_classifier"]
    evaluate.eval_main([str(run), "metrics.num_fake=300", "metrics.batch=128", "device=cpu"])
    assert read_metrics(run)["metrics"]["fd_classifier"] == pytest.approx(first, rel=1e-9)


def test_eval_uses_the_ema_generator_and_writes_metrics_json_when_missing(tmp_path):
    run = tmp_path / "run"
    make_run(run, ema=True)
    evaluate.eval_main([str(run), "metrics.num_fake=200", "metrics.split=test", "device=cpu"])
    record = read_metrics(run)
    p = record["protocol"]["fd_classifier"]
    assert p["generator"] == "G_ema" and p["real"] == "mnist_mini-test-32" and p["num_real"] == 1000
    assert record["step"] == 7 and "config" in record


def test_eval_leaves_metrics_json_alone_while_a_training_run_holds_the_directory(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    make_run(run, metrics={"step": 7, "status": "running", "metrics": {"old": 1.0}, "protocol": {}})
    before = (run / "metrics.json").read_bytes()
    holder = rundir.RunLock(run).acquire()  # a separate lock, as a training process in the directory holds it
    try:
        assert evaluate.eval_main([str(run), "metrics.num_fake=200", "device=cpu"]) == 0
    finally:
        holder.release()
    assert (run / "metrics.json").read_bytes() == before  # the running job's record is not rewritten under it
    out = capsys.readouterr().out
    assert "fd_classifier" in out and "written to" not in out  # the numbers are still printed
    assert f"in use by ganbench process {os.getpid()}" in caplog.text and "not written to" in caplog.text
    # once the directory is free, the same command merges its numbers in
    assert evaluate.eval_main([str(run), "metrics.num_fake=200", "device=cpu"]) == 0
    record = read_metrics(run)
    assert record["metrics"]["old"] == 1.0 and math.isfinite(record["metrics"]["fd_classifier"])


def test_eval_errors_are_one_sentence(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    cases = [([str(tmp_path / "nope")], "does not exist"),
             ([str(tmp_path)], "not a ganbench run directory"),
             ([str(run), "--checkpoint", "best"], "no checkpoints/best.pt"),
             ([str(run), "--checkpoint", str(tmp_path / "x.pt")], "neither last, best nor a checkpoint file"),
             ([str(run), "steps=3"], "only metrics.KEY=VALUE"),
             ([str(run), "metrics.names=[inception]"], "unknown metric 'inception'"),
             ([str(run), "--frobnicate", "1"], "unknown option --frobnicate")]
    for argv, needle in cases:
        with pytest.raises(GanbenchError, match=needle):
            evaluate.eval_main(argv)
    toy = tmp_path / "toy"
    cfg = compose(["dataset=ring8", "model=mlp", "model.generator.hidden=8", "model.discriminator.hidden=8"])
    (toy / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, toy / ".hydra" / "config.yaml")
    G = instantiate(cfg.model.generator, out_shape=(2,))
    checkpoint.save({"step": 1, "G": G.state_dict(), "G_ema": None}, toy / "checkpoints")
    with pytest.raises(GanbenchError, match="2D toy dataset"):
        evaluate.eval_main([str(toy)])
    with pytest.raises(GanbenchError, match="2D toy dataset"):
        evaluate.sample_main([str(toy), "--n", "4", "--out", str(tmp_path / "s")])


def test_sample_writes_pngs_and_a_grid(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    out = tmp_path / "samples"
    assert evaluate.sample_main([str(run), "--n", "70", "--out", str(out), "device=cpu"]) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 71 and files[0] == "000000.png" and files[-2] == "000069.png" and "grid.png" in files
    one = np.asarray(Image.open(out / "000000.png"))
    assert one.shape == (32, 32) and one.dtype == np.uint8
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (8 * 34 + 2, 8 * 34 + 2, 3)  # 64 images, 8 per row, 2-pixel padding
    again = tmp_path / "again"
    evaluate.sample_main([str(run), "--n=3", f"--out={again}", "device=cpu"])
    assert np.array_equal(np.asarray(Image.open(again / "000002.png")), np.asarray(Image.open(out / "000002.png")))
    other = tmp_path / "other"
    evaluate.sample_main([str(run), "--n", "3", "--out", str(other), "--seed", "5", "device=cpu"])
    assert not np.array_equal(np.asarray(Image.open(other / "000000.png")), one)
    with pytest.raises(GanbenchError, match="needs --out"):
        evaluate.sample_main([str(run), "--n", "3"])
    with pytest.raises(GanbenchError, match="--n must be a positive integer"):
        evaluate.sample_main([str(run), "--n", "0", "--out", str(other)])


def test_cli_eval_and_sample(tmp_path, metrics_cache):  # noqa: F811
    run = tmp_path / "run"
    make_run(run)
    env = {"GANBENCH_CACHE": str(metrics_cache)}
    proc = run_cli(["eval", str(run), "metrics.num_fake=100", "metrics.names=[fd_classifier,prc_classifier]",
                    "device=cpu"], tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    metrics = read_metrics(run)["metrics"]
    assert f"fd_classifier  {metrics['fd_classifier']:.6g}" in proc.stdout
    assert (f"prc_classifier precision {metrics['precision_classifier']:.4g}, "
            f"recall {metrics['recall_classifier']:.4g}") in proc.stdout
    proc = run_cli(["sample", str(run), "--n", "2"], tmp_path, env_extra=env)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "ganbench: error: ganbench sample needs --out; e.g. ganbench sample RUN_DIR --n 64 --out samples/.")
