"""scripts/published_systems.py: every published system composes at its paper setting, and the script runs the
systems and tabulates them against hinge + sn (a tiny run; the study itself is in docs/RESULTS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import compose
from PIL import Image
from test_classifier_metric import _use_metrics_cache, metrics_cache  # noqa: F401  (shared session cache)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import published_systems as ps  # noqa: E402


def test_every_system_composes_at_its_paper_setting():
    for name in ps.SYSTEMS:
        cmd = ps.command(name, 1, 10, ["dataset=mnist_mini"], Path("run"))
        assert cmd[:2] == ["ganbench", "train"] and "recipe=paper" in cmd and ps.METRICS in cmd
        cfg = compose([c for c in cmd[2:] if not c.startswith("hydra.")])
        assert cfg.seed == 1 and cfg.steps == 10 and list(cfg.metrics.names) == ["fd_classifier", "prc_classifier"]
        loss, constraint = (o.split("=")[1] for o in ps.SYSTEMS[name])
        assert cfg.loss._target_.rsplit(".", 1)[1].lower().replace("_", "") in {
            "sgan": "sgan", "wgan": "wgan", "wgan_gp": "wgangp", "hinge": "hinge", "wgan_div": "wgandiv",
            "ganqp": "ganqp", "lsgan": "lsgan"}[loss]
        assert constraint in {"none", "clip", "sn", "gn", "gran"}
    clip = compose(ps.command("wgan_clip", 0, None, [], Path("run"))[2:-1])
    assert clip.optim.g._target_ == "ganbench.optim.RMSprop" and clip.critic_schedule.burst == 100


@pytest.mark.slow
def test_the_script_runs_systems_and_tables_them_against_hinge_sn(tmp_path, capsys):
    tiny = ["model.generator.ch=8", "model.discriminator.ch=8", "batch_size=8", "g_batch_size=8",
            "eval_every=2", "sample_every=2", "metrics.num_fake=200", "critic_schedule.burst=2"]
    root = tmp_path / "paper"
    argv = ["run", str(root), "--systems", "hinge_sn", "wgan_clip", "--seeds", "0", "--steps", "2", "--", *tiny]
    assert ps.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count(": exit 0 in ") == 2 and "ganbench train loss=wgan constraint=clip recipe=paper" in out
    record = json.loads((root / "wgan_clip" / "seed0" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["config"]["critic_schedule"]["burst"] == 2
    assert 0 <= record["metrics"]["recall_classifier"] <= 1
    assert ps.main(argv) == 0 and "already completed" in capsys.readouterr().out  # a finished run is kept
    assert ps.main(["table", str(root)]) == 1  # systems without a run
    rows = {line.split(" (")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()[2:]}
    fd = {s: json.loads((root / s / "seed0" / "metrics.json").read_text())["metrics"]["fd_classifier"]
          for s in ("hinge_sn", "wgan_clip")}
    assert "| 1× |" in rows["hinge_sn"]
    assert f"{fd['wgan_clip'] / fd['hinge_sn']:.2g}×" in rows["wgan_clip"]
    assert f"{fd['wgan_clip']:.3g} at 2" in rows["wgan_clip"] and "| 0 | – |" in rows["sgan"]
    fig = tmp_path / "grids.png"
    assert ps.main(["figure", str(root), str(root), "--out", str(fig), "--systems", "hinge_sn", "wgan_clip"]) == 0
    assert Image.open(fig).size == (110 + 2 * (274 + 6), 16 + 2 * (70 + 4))  # 2 systems × 2 roots, 2 rows of 8
