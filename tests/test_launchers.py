"""Sweeps through Hydra's joblib launcher (parallel jobs on one machine) and submitit's local executor (the code path
of `hydra/launcher=submitit_slurm`, without Slurm). Each job runs in another process, so these are slow."""

from __future__ import annotations

import pytest

from conftest import read_metrics, run_cli, tiny_overrides

LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


def statuses(sweep):
    return {p.parent.name: read_metrics(p.parent)["status"] for p in sweep.glob("*/metrics.json")}


@pytest.mark.slow
def test_joblib_runs_the_grid_two_jobs_at_a_time(tmp_cwd):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    proc = run_cli(["train", "-m", *LAUNCHERS["joblib"], *over, "loss=hinge,wgan", "constraint=none,sn",
                    "hydra.sweep.dir=sweep"], tmp_cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert statuses(tmp_cwd / "sweep") == {"0_hinge_none": "completed", "1_hinge_sn": "completed",
                                           "2_wgan_none": "completed", "3_wgan_sn": "completed"}
    assert read_metrics(tmp_cwd / "sweep" / "3_wgan_sn")["config"]["loss"]["_target_"] == "ganbench.losses.WGAN"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_failing_job_does_not_stop_a_launched_sweep(tmp_cwd, launcher):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    # GAN-QP needs λ > 0: that job fails when it builds its loss, the other one runs to the end.
    proc = run_cli(["train", "-m", *LAUNCHERS[launcher], *over, "loss=ganqp", "loss.lam=10,-1",
                    "hydra.sweep.dir=sweep"], tmp_cwd, timeout=600)
    assert "Traceback" not in proc.stderr
    assert statuses(tmp_cwd / "sweep") == {"0_ganqp_sn": "completed", "1_ganqp_sn": "failed"}
    assert read_metrics(tmp_cwd / "sweep" / "1_ganqp_sn")["error"] == "ganqp lam must be > 0, got -1."
    assert proc.returncode == 1
    assert "1 job(s) of the sweep failed" in proc.stderr and "ganqp lam must be > 0" in proc.stderr


@pytest.mark.slow
def test_every_launcher_gives_the_same_table(tmp_cwd):
    """The same 2×2 grid through the basic launcher, joblib (2 jobs) and submitit's local executor: same numbers."""
    from ganbench.report import main as report_main

    grid = [*tiny_overrides("mlp", dataset="grid25", steps=4), "loss=hinge,wgan", "constraint=none,gn"]
    tables = {}
    for name, launcher in {"basic": [], **LAUNCHERS}.items():
        proc = run_cli(["train", "-m", *grid, *launcher, f"hydra.sweep.dir={name}"], tmp_cwd)
        assert proc.returncode == 0, proc.stderr
        assert report_main([str(tmp_cwd / name)]) == 0
        tables[name] = {p.parent.name: (read_metrics(p.parent)["step"], read_metrics(p.parent)["metrics"])
                        for p in (tmp_cwd / name).glob("*/metrics.json")}
        assert (tmp_cwd / name / "report.csv").is_file()
    assert len(tables["basic"]) == 4
    assert tables["joblib"] == tables["basic"] and tables["submitit_local"] == tables["basic"]
