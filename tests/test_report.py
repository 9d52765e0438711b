"""`ganbench report`: table, CSV and heatmap of a sweep directory, on hand-written sweeps and on a real one."""

from __future__ import annotations

import csv
import json
import math

import pytest
from conftest import run_cli, tiny_overrides
from PIL import Image

from ganbench import cli, report
from ganbench.errors import GanbenchError


def make_run(sweep, name, overrides, status="completed", metrics=None, history=None, error=None, record=True,
             choices=None, wall=1.5):
    run_dir = sweep / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if choices is not None:
        lines = "".join(f"      {k}: {v}\n" for k, v in choices.items())
        (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    choices:\n{lines}")
    if record:
        data = {"step": 10 if status != "failed" else 0, "status": status, "metrics": metrics or {},
                "history": history or [], "wall_time_s": wall, "config": {}}
        if error:
            data["error"] = error
        (run_dir / "metrics.json").write_text(json.dumps(data))
    return run_dir


@pytest.fixture
def sweep(tmp_path):
    """2 losses × 2 constraints × 2 seeds on grid25; one cell all failed, one run still running, one not started."""
    sweep = tmp_path / "sweep"
    job = 0
    for loss in ("hinge", "wgan_gp"):
        for constraint in ("none", "sn"):
            for seed in (0, 1):
                overrides = ["dataset=grid25", f"loss={loss}", f"constraint={constraint}", f"seed={seed}"]
                name = f"{job}_{loss}_{constraint}"
                if (loss, constraint) == ("wgan_gp", "sn"):
                    make_run(sweep, name, overrides, status="diverged", error="training diverged: NaN at step 3.",
                             metrics={"modes": 2, "hq": 0.1, "w1": 3.0})
                elif (loss, constraint, seed) == ("wgan_gp", "none", 1):
                    make_run(sweep, name, overrides, record=False)  # started, no metrics.json yet
                else:
                    w1 = 1.0 + job / 10
                    make_run(sweep, name, overrides, metrics={"modes": 20 + seed, "hq": 0.8, "w1": w1},
                             history=[{"step": 5, "metrics": {"modes": 24, "hq": 0.9, "w1": w1 - 0.5}},
                                      {"step": 10, "metrics": {"modes": 20 + seed, "hq": 0.8, "w1": w1}}])
                job += 1
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / ".submitit").mkdir()  # launcher folders are not runs
    return sweep


def test_read_sweep_rows_status_and_best(sweep):
    runs = report.read_sweep(sweep)
    assert [r.name for r in runs] == [f"{i}_{loss}_{c}" for i, (loss, c) in enumerate(
        [(loss, c) for loss in ("hinge", "wgan_gp") for c in ("none", "sn") for _ in (0, 1)])]
    by_name = {r.name: r for r in runs}
    first = by_name["0_hinge_none"]
    assert (first.status, first.step, first.loss, first.constraint) == ("completed", 10, "hinge", "none")
    assert first.metrics == {"modes": 20.0, "hq": 0.8, "w1": 1.0}
    assert first.best == {"modes": 24.0, "hq": 0.9, "w1": 0.5}  # max, max, min over the history
    assert by_name["5_wgan_gp_none"].status == "missing"
    assert by_name["6_wgan_gp_sn"].status == "diverged" and "NaN" in by_name["6_wgan_gp_sn"].note


@pytest.mark.parametrize("metric,lower", [("w1", True), ("fid", True), ("fid_ema", True), ("fd_dinov2", True),
                                          ("kid", True), ("modes", False), ("hq", False), ("is", False)])
def test_best_direction(metric, lower):
    assert report.lower_is_better(metric) is lower
    best = report._best([{"step": 1, "metrics": {metric: 2.0}}, {"step": 2, "metrics": {metric: 1.0}}],
                        {metric: 3.0})
    assert best[metric] == (1.0 if lower else 3.0)


def test_report_writes_md_csv_and_heatmap(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md in printed
    assert "Common overrides: `dataset=grid25`" in md
    header = "| run | overrides | status | step | w1 | modes | hq | best w1 | best modes | best hq | wall time (s) |"
    row = "| 0_hinge_none | loss=hinge constraint=none seed=0 | completed | 10 | 1 | 20 | 0.8 | 0.5 | 24 | 0.9 | 1.5 |"
    assert header in md and row in md
    assert "- `5_wgan_gp_none` (missing)" in md and "- `6_wgan_gp_sn` (diverged): training diverged" in md
    assert "![heatmap_w1.png](heatmap_w1.png)" in md
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 8
    assert rows[0]["overrides"] == "dataset=grid25 loss=hinge constraint=none seed=0"
    assert float(rows[0]["best_w1"]) == 0.5 and float(rows[0]["w1"]) == 1.0 and rows[0]["wall_time_s"] == "1.5"
    assert rows[5]["status"] == "missing" and rows[5]["w1"] == ""
    assert rows[6]["error"].startswith("training diverged")
    with Image.open(out / "heatmap_w1.png") as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert not (sweep / "report.md").exists()


def test_heatmap_cells_mean_std_and_failures(sweep):
    losses, constraints, cells = report.cell_stats(report.read_sweep(sweep), "w1")
    assert (losses, constraints) == (["hinge", "wgan_gp"], ["none", "sn"])
    assert cells[("hinge", "none")]["values"] == [1.0, 1.1]
    assert report._cell_text(cells[("hinge", "none")]) == f"1.05±{math.sqrt(0.005):.2g}\nn=2"
    assert cells[("wgan_gp", "sn")] == {"values": [], "failed": 2, "other": []}  # diverged runs are not averaged
    assert report._cell_text(cells[("wgan_gp", "sn")]) == "failed"
    assert report._cell_text(cells[("wgan_gp", "none")]) == "1.4\n1 missing"


def test_metric_choice(sweep, tmp_path, capsys):
    report.main([str(sweep), "--metric", "modes", "--out", str(tmp_path / "o")])
    assert (tmp_path / "o" / "heatmap_modes.png").is_file()
    with pytest.raises(GanbenchError, match=r"no run reports the metric 'fid'; choose one of: w1, modes, hq\."):
        report.main([str(sweep), "--metric", "fid"])


def test_partial_and_unreadable_records(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_run(sweep, "0_hinge_sn", ["loss=hinge"], status="running", metrics={"w1": 2.0},
             choices={"loss": "hinge", "constraint": "sn"})
    broken = make_run(sweep, "1_sgan_sn", ["loss=sgan"], record=False)
    (broken / "metrics.json").write_text('{"step": 3, "sta')
    make_run(sweep, "2_sgan_gn", ["loss=sgan", "constraint=gn"], status="failed", error="bad data.", wall=None)
    assert report.main([str(sweep)]) == 0
    runs = {r.name: r for r in report.read_sweep(sweep)}
    assert runs["0_hinge_sn"].constraint == "sn"  # Hydra's recorded choice, though not overridden
    assert runs["1_sgan_sn"].status == "unreadable" and "cannot be read" in runs["1_sgan_sn"].note
    md = (sweep / "report.md").read_text()
    assert "- `0_hinge_sn` (running)" in md and "- `1_sgan_sn` (unreadable)" in md
    assert "- `2_sgan_gn` (failed): bad data." in md
    assert (sweep / "heatmap_w1.png").is_file()


def test_sweep_without_metrics_has_no_heatmap(tmp_path, capsys):
    make_run(tmp_path / "s", "0_hinge_sn", ["dataset=mnist_mini"])
    assert report.main([str(tmp_path / "s")]) == 0
    assert "no heatmap" in capsys.readouterr().out
    assert (tmp_path / "s" / "report.csv").is_file() and not list((tmp_path / "s").glob("*.png"))


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "nope", "is not a directory"),
    (lambda p: p, "holds no runs"),
])
def test_errors_are_one_sentence(tmp_path, capsys, make, needle):
    (tmp_path / "empty_dir").mkdir()
    assert cli.main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ganbench: error: ") and needle in err[0]


def test_bad_arguments_are_one_line(capsys):
    assert cli.main(["report"]) == 2
    assert cli.main(["report", ".", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("ganbench: error: ") and "usage: ganbench report" in e for e in err)


def test_report_of_a_real_sweep_and_its_hparams(tmp_cwd):
    """A real sweep with a failing job: the report lists both; TensorBoard's HParams data is in the completed run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    proc = run_cli(["train", "-m", *over, "loss=ganqp", "dataset.spacing=2,1e38", "hydra.sweep.dir=sweep"], tmp_cwd)
    assert proc.returncode == 1, proc.stderr
    proc = run_cli(["report", "sweep"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert "| 0_ganqp_sn | dataset.spacing=2 | completed | 2 |" in proc.stdout
    assert "| 1_ganqp_sn | dataset.spacing=1e+38 | diverged | 1 |" in proc.stdout
    assert "- `1_ganqp_sn` (diverged): training diverged: a non-finite loss appeared at step 1" in proc.stdout
    assert (tmp_cwd / "sweep" / "heatmap_w1.png").is_file()
    acc = EventAccumulator(str(tmp_cwd / "sweep" / "0_ganqp_sn"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["loss"].string_value == "ganqp" and start.hparams["constraint"].string_value == "sn"
    assert {"hparam/w1", "hparam/modes", "hparam/hq"} <= set(acc.Tags()["scalars"])


def test_seed_summary_counts_seeds_meeting_the_bar(tmp_path, capsys):
    """One row per setting over seeds: seeds meeting PacGAN's bar (unfinished runs count as misses), mean ± std."""
    sweep = tmp_path / "seeds"
    results = [(25, 0.95, 0.2), (25, 0.93, 0.3), (24, 0.95, 0.4), (25, 0.85, 0.5)]
    for seed, (modes, hq, w1) in enumerate(results):
        make_run(sweep, f"{seed}_hinge_sn", ["dataset=grid25", "loss=hinge", "constraint=sn", f"seed={seed}"],
                 metrics={"modes": modes, "hq": hq, "w1": w1})
    make_run(sweep, "4_hinge_sn", ["dataset=grid25", "loss=hinge", "constraint=sn", "seed=4"], status="diverged",
             error="training diverged: NaN at step 3.")
    make_run(sweep, "5_wgan_gn", ["dataset=ring8", "loss=wgan", "constraint=gn", "seed=0"],
             metrics={"modes": 8, "hq": 0.91, "w1": 0.1})
    rows = report.seed_summary(report.read_sweep(sweep))
    assert [(r["dataset"], r["loss"], r["constraint"], r["met"], r["n"], r["completed"]) for r in rows] == [
        ("grid25", "hinge", "sn", 2, 5, 4), ("ring8", "wgan", "gn", 1, 1, 1)]
    assert rows[0]["hq"] == "0.920 ± 0.048" and rows[0]["w1"] == "0.350 ± 0.129"
    assert rows[1]["hq"] == "0.910 ± 0.000"
    assert cli.main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| grid25 | hinge | sn |  | 2/5 (1 not completed) | 0.920 ± 0.048 | 0.350 ± 0.129 |" in out


def test_seed_summary_is_empty_for_image_runs(tmp_path):
    sweep = tmp_path / "images"
    make_run(sweep, "0_hinge_sn", ["loss=hinge", "constraint=sn"], metrics={"fd_classifier": 90.0},
             choices={"dataset": "mnist_mini", "loss": "hinge", "constraint": "sn"})
    assert report.seed_summary(report.read_sweep(sweep)) == []
    assert "Over seeds" not in report.to_markdown(report.read_sweep(sweep), ["fd_classifier"], sweep, None)
