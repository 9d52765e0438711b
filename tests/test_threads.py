"""CPU thread policy: a short OpenMP spin set before torch loads, and cores shared out among a sweep's parallel jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ganbench import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("user", [{}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"},
                                  {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "7"}])
def test_the_wait_policy_is_set_only_where_the_user_set_none(user):
    environ = dict(user)
    threads.set_wait_policy(environ)
    if user:
        assert environ == user
    else:
        assert environ == {"GOMP_SPINCOUNT": threads.SPIN_COUNT}


def test_the_cli_sets_the_spin_before_torch_loads():
    """In a fresh `ganbench` process the variable is in the environment before `torch` is first imported."""
    code = ("import builtins, os, sys\n"
            "seen = []\n"
            "real_import = builtins.__import__\n"
            "def spy(name, *a, **k):\n"
            "    if name == 'torch' and not seen:\n"
            "        seen.append(os.environ.get('GOMP_SPINCOUNT'))\n"
            "    return real_import(name, *a, **k)\n"
            "builtins.__import__ = spy\n"
            "from ganbench.cli import main\n"
            "main(['bench', '--iters', '1', '--warmup', '0', 'dataset=ring8', 'model=mlp', 'device=cpu'])\n"
            "print('SPIN_AT_TORCH_IMPORT', seen)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"SPIN_AT_TORCH_IMPORT ['{threads.SPIN_COUNT}']" in out.stdout


@pytest.mark.slow
def test_a_joblib_sweep_gives_each_job_its_share_of_the_cores(tmp_path):
    """Two jobs at once: each job's execution record says it ran on cores // 2 threads (at least one), the count
    joblib's workers set in OMP_NUM_THREADS."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    sweep = tmp_path / "sweep"
    out = subprocess.run([sys.executable, "-m", "ganbench", "train", "-m", "hydra/launcher=joblib",
                          "hydra.launcher.n_jobs=2", "dataset=ring8", "model=mlp", "steps=2", "device=cpu",
                          "progress=false", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    assert [r["execution"]["cpu_threads"] for r in records] == [expected, expected]


def test_bench_under_load_prints_each_case_its_ratio_and_the_reference(capsys):
    from ganbench.bench import LOAD_CASES, _rates, main

    assert main(["--under-load", "--iters", "1", "--warmup", "1", "dataset=ring8", "model=mlp", "device=cpu"]) == 0
    out = capsys.readouterr().out
    ours_text, reference_text = out.split("reference: the same cases with OpenMP's default wait")
    ours, theirs = _rates(ours_text), _rates(reference_text)
    assert set(ours) == set(theirs) == set(LOAD_CASES)
    assert all(rate > 0 for rate in (*ours.values(), *theirs.values()))
    summary = next(line for line in out.splitlines() if line.startswith("ganbench / reference:"))
    for label in LOAD_CASES:  # each printed ratio is the quotient of the two printed rates (rounded)
        printed = float(summary.split(f"{label} ")[1].split("x")[0])
        assert printed == pytest.approx(ours[label] / theirs[label], abs=0.01 + 0.01 * printed)


def test_bench_under_load_is_cpu_only():
    from ganbench.bench import parse
    from ganbench.errors import GanbenchError

    with pytest.raises(GanbenchError, match="--under-load"):
        parse(["--under-load", "dataset=ring8", "model=mlp", "device=cuda"])
