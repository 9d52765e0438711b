"""Random-search studies (study=random): the draws, the best-of-k analysis and a real sweep through `ganbench train -m`
and `ganbench report`, whose trials rerun alone from their command.txt to the same metrics."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch
from conftest import compose, read_metrics, run_cli

from ganbench import study
from ganbench.errors import GanbenchError


def trial_cfg(trial: int, *extra: str):
    return compose(["study=random", f"study.trial={trial}", "dataset=grid25", "model=mlp", *extra])


def test_draws_are_a_pure_function_of_seed_and_trial():
    space = trial_cfg(0).study.space
    torch.manual_seed(1)
    np.random.seed(1)
    first = study.draws(0, 3, space)
    torch.manual_seed(2)  # neither torch's nor numpy's global RNG takes part
    np.random.seed(2)
    assert study.draws(0, 3, space) == first
    assert study.draws(0, 4, space) != first and study.draws(1, 3, space) != first
    assert set(first) == {"lr", "beta1", "beta2", "n_dis", "weight"}
    assert 1e-5 <= first["lr"] <= 1e-2 and 0.1 <= first["weight"] <= 100
    assert first["beta1"] in (0.0, 0.5) and first["beta2"] in (0.9, 0.999) and first["n_dis"] in (1, 2, 5)
    # over many trials every choice comes up and the log-uniform draw covers its decades
    many = [study.draws(0, t, space) for t in range(200)]
    assert {d["n_dis"] for d in many} == {1, 2, 5} and {d["beta1"] for d in many} == {0.0, 0.5}
    lrs = np.log10([d["lr"] for d in many])
    assert lrs.min() < -4.5 and lrs.max() > -2.5


def test_cells_share_the_draws_and_apply_only_the_keys_they_have():
    gp = study.apply(trial_cfg(2, "loss=hinge", "constraint=gp"))
    sn = study.apply(trial_cfg(2, "loss=wgan", "constraint=sn"))
    qp = study.apply(trial_cfg(2, "loss=ganqp", "constraint=none"))
    d = study.draws(0, 2, gp.study.space)
    for cfg in (gp, sn, qp):  # common random numbers: the shared knobs are equal in every cell
        assert cfg.optim.lr_g == cfg.optim.lr_d == d["lr"]
        assert list(cfg.optim.betas) == [d["beta1"], d["beta2"]] and cfg.n_dis == d["n_dis"]
    assert gp.constraint.weight == qp.loss.lam == d["weight"]  # one λ draw, on each cell's own weight key
    assert "weight" not in sn.constraint and "lam" not in sn.loss
    assert study.assignments(trial_cfg(2, "constraint=sn")).keys() == {"optim.lr_g", "optim.lr_d", "optim.betas.0",
                                                                        "optim.betas.1", "n_dis"}
    assert study.apply(compose(["dataset=grid25", "model=mlp"])).optim.lr_g == 2e-4  # no study: unchanged


def test_the_command_spells_the_draws_out_and_drops_the_study():
    cfg = study.apply(trial_cfg(1, "constraint=gp"))
    overrides = ["study=random", "study.trials=4", "study.trial=1", "hydra/launcher=joblib", "resume=auto",
                 "dataset=grid25", "n_dis=3", "constraint=gp", "seed=2"]
    line = study.command(overrides, cfg, study.assignments(cfg))
    d = study.draws(0, 1, cfg.study.space)
    assert shlex.split(line) == ["ganbench", "train", "dataset=grid25", "constraint=gp", "seed=2",
                                 f"optim.lr_g={d['lr']!r}", f"optim.lr_d={d['lr']!r}",
                                 f"optim.betas=[{d['beta1']!r},{d['beta2']!r}]", f"n_dis={d['n_dis']}",
                                 f"constraint.weight={d['weight']!r}"]


def test_a_bad_study_is_one_sentence():
    with pytest.raises(GanbenchError, match="study.trials must be a positive integer"):
        study.check(trial_cfg(0, "study.trials=0"))
    with pytest.raises(GanbenchError, match="log_uniform must be"):
        study.check(trial_cfg(0, "study.space.lr.log_uniform=[0.1,0.01]"))


def test_best_of_k_against_hand_computed_values():
    trials = [3.0, 1.0, 2.0, 5.0, 4.0]  # K = 5, lower is better; P(best of k among the i best) = 1 − (1 − i/5)^k
    assert study.best_of_k(trials, True, 1) == (3.0, 1.0, 5.0)  # k = 1: the trials' median, interval their range
    assert study.best_of_k(trials, True, 2) == (2.0, 1.0, 5.0)  # CDF 0.36, 0.64, 0.84, 0.96, 1
    assert study.best_of_k(trials, True, 5) == (1.0, 1.0, 3.0)  # k = K: the best; 0.672, 0.922, 0.98976
    # higher is better: the mirror image
    assert study.best_of_k([-v for v in trials], False, 5) == (-1.0, -1.0, -3.0)
    # an even K at k = 1: numpy's median (the CDF meets 0.5 between two trials)
    even = [0.4, 0.1, 0.3, 0.2]
    assert study.best_of_k(even, True, 1)[0] == pytest.approx(float(np.median(even)))
    assert study.best_of_k(even, False, 4)[0] == 0.4
    # a failed trial is the worst value: the median while it is one of three, not the best of three
    assert study.best_of_k([float("inf"), 1.0, 2.0], True, 3) == (1.0, 1.0, float("inf"))  # CDF 0.70, 0.96, 1
    assert [p[0] for p in study.curve(trials, True)] == [1, 2, 3, 4, 5]


def test_ranking_marks_overlapping_intervals_as_ties():
    low = {"a": (0.1, 0.05, 0.2), "b": (0.15, 0.12, 0.3), "c": (0.5, 0.4, 0.6), "d": (0.55, 0.35, 0.7)}
    assert study.rank(low, True) == [(1, "a", ["b"]), (1, "b", ["a"]), (3, "c", ["d"]), (3, "d", ["c"])]
    # higher is better (hq): the interval's better end is its upper one
    high = {"x": (0.9, 0.95, 0.8), "y": (0.5, 0.6, 0.4), "z": (0.55, 0.85, 0.3)}
    assert study.rank(high, False) == [(1, "x", ["z"]), (1, "z", ["x", "y"]), (2, "y", ["z"])]


STUDY = ["study=random", "study.trials=2", "dataset=grid25", "model=mlp", "model.generator.hidden=32",
         "model.discriminator.hidden=32", "batch_size=32", "device=cpu", "cpu_threads=1", "progress=false",
         "log_every=10", "sample_every=30", "eval_every=15", "ckpt_every=15", "eval_samples=300",
         "loss=hinge,wgan", "constraint=sn,gp"]


@pytest.mark.slow
def test_a_study_runs_reports_and_reruns_a_trial_alone(tmp_cwd):
    proc = run_cli(["train", "-m", *STUDY, "steps=30", "hydra.sweep.dir=sweep"], tmp_cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_cwd / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 8 and jobs[0] == "0_hinge_sn_trial0" and "7_wgan_gp_trial1" in jobs
    records = {j: read_metrics(sweep / j) for j in jobs}
    assert all(r["status"] == "completed" for r in records.values())
    for j, r in records.items():  # the trial's draws are what ran
        space, trial = r["config"]["study"]["space"], r["config"]["study"]["trial"]
        assert r["config"]["optim"]["lr_d"] == study.draws(0, trial, space)["lr"]
        assert j.endswith(f"trial{trial}")

    proc = run_cli(["report", "sweep"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    text = (sweep / "report.md").read_text()
    assert "## Random-search study: w1 (lower is better)" in text and "## Random-search study: hq" in text
    for cell in ("| hinge | sn | 2 |", "| hinge | gp | 2 |", "| wgan | sn | 2 |", "| wgan | gp | 2 |"):
        assert cell in text
    assert (sweep / "study_w1.png").stat().st_size > 0 and (sweep / "study_hq.csv").is_file()
    # the best-of-k row of a cell matches the analysis of its two trials' final W1
    w1 = [records[j]["metrics"]["w1"] for j in jobs if "_hinge_sn_" in j]
    median, a, b = study.best_of_k(w1, True, 2)
    assert f"{median:.3g} [{min(a, b):.3g}, {max(a, b):.3g}]" in text.split("| hinge | sn | 2 |")[1].split("\n")[0]

    # re-running one trial's stored command reproduces its metrics exactly
    job = "6_wgan_sn_trial1"
    args = shlex.split((sweep / job / "command.txt").read_text())
    assert args[:2] == ["ganbench", "train"] and not any(a.startswith(("study", "hydra")) for a in args)
    proc = run_cli([*args[1:], "hydra.run.dir=rerun"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(tmp_cwd / "rerun")["metrics"] == records[job]["metrics"]


@pytest.mark.slow
def test_a_study_through_joblib_submitit_and_resume_auto_gives_the_same_trials(tmp_cwd):
    """The same trials through the joblib launcher, stopped at step 15 and finished with resume=auto, and through
    submitit's local executor, end where one unbroken sweep through the basic launcher ends."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cells = [*STUDY[:-2], "loss=hinge", "constraint=gp"]
    assert run_cli(["train", "-m", *cells, "steps=30", "hydra.sweep.dir=basic"], tmp_cwd).returncode == 0
    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "resume=auto", "hydra.sweep.dir=joblib"]
    assert run_cli(["train", "-m", *cells, *joblib, "steps=15"], tmp_cwd).returncode == 0
    proc = run_cli(["train", "-m", *cells, *joblib, "steps=30"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    submitit = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.sweep.dir=submitit"]
    proc = run_cli(["train", "-m", *cells, *submitit, "steps=30"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    for job in ("0_hinge_gp_trial0", "1_hinge_gp_trial1"):
        fresh = read_metrics(tmp_cwd / "basic" / job)
        for sweep in ("joblib", "submitit"):
            assert read_metrics(tmp_cwd / sweep / job)["step"] == 30
            assert read_metrics(tmp_cwd / sweep / job)["metrics"] == fresh["metrics"]
            command = (tmp_cwd / sweep / job / "command.txt").read_text()
            assert command == (tmp_cwd / "basic" / job / "command.txt").read_text()  # no launcher, no resume=auto


def test_a_typo_in_the_space_or_a_drawn_knob_on_the_command_line_is_one_sentence():
    with pytest.raises(GanbenchError, match=r"study.space.lr.set names 'optim.lr_gg', which is not a config key"):
        trial_cfg(0, "study.space.lr.set=[optim.lr_gg,optim.lr_d]")
    with pytest.raises(GanbenchError, match=r"study.space.weight.set names 'loss.lamda'"):
        trial_cfg(0, "study.space.weight.set=[loss.lamda]")
    with pytest.raises(GanbenchError, match=r"optim.lr_g is drawn by the study \(study.space.lr\).*~study.space.lr"):
        trial_cfg(0, "optim.lr_g=0.001")
    with pytest.raises(GanbenchError, match=r"optim.betas is drawn by the study \(study.space.beta1\)"):
        trial_cfg(0, "optim.betas=[0.5,0.9]")
    fixed = trial_cfg(0, "~study.space.lr", "optim.lr_g=0.001")  # a knob taken out of the search keeps its value
    assert fixed.optim.lr_g == 0.001 and fixed.optim.lr_d != 0.001
    assert trial_cfg(0, "constraint=sn").study.trial == 0  # a penalty key the cell lacks (sn has no weight) is fine
