"""Hostile and careless input, made for real in fresh processes: a run is never overwritten, and every refusal is one
line with the documented exit status.

Each case runs `ganbench ...` as a user would, in a fresh directory, against a copy of a finished run, and checks the
exit status, that stderr is one line and no traceback, and that every file of the earlier run keeps its sha256.
Tests run as root here, so "unreadable" is made with a directory where a file is expected, not with chmod.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys

import pytest
from conftest import read_metrics, run_cli, tiny_overrides
from test_cli import assert_one_line_error

from ganbench import checkpoint

OVER = tiny_overrides("mlp", dataset="grid25", steps=4)  # checkpoints and evaluations at steps 2 and 4


def digest(folder) -> dict:
    """sha256 of every file under ``folder`` (the lock file included), by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed 4-step run: last.pt (4), prev.pt (2), best.pt, metrics.json, .hydra/, events, samples."""
    cwd = tmp_path_factory.mktemp("finished")
    proc = run_cli(["train", *OVER, "hydra.run.dir=run"], cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "run"


@pytest.fixture
def run_dir(finished, tmp_cwd):
    """A copy of the finished run in this test's own directory, as outputs/run."""
    shutil.copytree(finished, tmp_cwd / "outputs" / "run")
    return tmp_cwd / "outputs" / "run"


# ---------------------------------------------------------------------------------------------------- a run is kept


@pytest.mark.parametrize("args", [
    [*OVER, "steps=2"],  # the same settings, fewer steps
    ["dataset=ring8", "model=mlp", "steps=2", "device=cpu", "cpu_threads=1"],  # another run altogether
    [*OVER, "resume=null"],
])
def test_a_fresh_run_into_a_finished_runs_directory_is_refused(run_dir, tmp_cwd, args):
    before = digest(run_dir)
    proc = run_cli(["train", *args, "hydra.run.dir=outputs/run"], tmp_cwd)
    assert_one_line_error(proc, f"{run_dir} holds another run", f"resume={run_dir}", "another hydra.run.dir")
    assert proc.returncode == 2 and digest(run_dir) == before


@pytest.mark.parametrize("record", ["metrics.json", "checkpoints/last.pt", ".hydra/config.yaml", "train.log",
                                    "events.out.tfevents.1.host", "samples/step_0000002.png"])
def test_any_one_record_of_a_run_is_enough_to_refuse(tmp_cwd, record):
    path = tmp_cwd / "outputs" / "run" / record
    path.parent.mkdir(parents=True)
    path.write_bytes(b"an earlier run's file")
    proc = run_cli(["train", *OVER, "hydra.run.dir=outputs/run"], tmp_cwd)
    assert_one_line_error(proc, "holds another run", record.split("/")[0])
    assert proc.returncode == 2 and path.read_bytes() == b"an earlier run's file"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # nothing else written: no .hydra, no log


def test_a_directory_hydra_names_at_run_time_is_checked_too(run_dir, tmp_cwd):
    """hydra.run.dir with an interpolation is known only when Hydra composes it (as the default timestamped one,
    which two runs started in the same second share): the log-file handler refuses it before Hydra writes."""
    (tmp_cwd / "outputs" / "run_cpu").mkdir()
    shutil.copytree(run_dir, tmp_cwd / "outputs" / "run_cpu", dirs_exist_ok=True)
    target = tmp_cwd / "outputs" / "run_cpu"
    before = digest(target)
    proc = run_cli(["train", *OVER, "hydra.run.dir=outputs/run_${device}"], tmp_cwd)
    assert_one_line_error(proc, f"{target} holds another run")
    assert proc.returncode == 2 and digest(target) == before


def test_an_empty_run_or_sweep_dir_is_refused(tmp_cwd):
    for args in (["hydra.run.dir="], ["-m", "hydra.sweep.dir=", "seed=0,1"], ["hydra.run.dir=' '"]):
        proc = run_cli(["train", *OVER, *args], tmp_cwd)
        assert_one_line_error(proc, "is empty", "current directory")
        assert proc.returncode == 2
    assert sorted(p.name for p in tmp_cwd.iterdir()) == []


def test_a_sweep_into_an_earlier_sweep_is_refused_and_resume_auto_continues_it(tmp_cwd):
    sweep = ["train", "-m", *tiny_overrides("mlp", dataset="grid25", steps=2), "seed=0,1"]
    assert run_cli([*sweep, "hydra.sweep.dir=outputs/sweep"], tmp_cwd).returncode == 0
    folder = tmp_cwd / "outputs" / "sweep"
    before = digest(folder)
    for args in (["hydra.sweep.dir=outputs/sweep"], ["hydra.sweep.dir=outputs/${hydra.job.name}_sweep"]):
        if "job.name" in args[0]:  # the same sweep under the name Hydra composes at run time (callback check)
            shutil.copytree(folder, tmp_cwd / "outputs" / "train_sweep")
        target = tmp_cwd / "outputs" / ("sweep" if "job.name" not in args[0] else "train_sweep")
        proc = run_cli([*sweep, *args], tmp_cwd)
        assert_one_line_error(proc, f"hydra.sweep.dir={target} holds earlier runs", "resume=auto")
        assert proc.returncode == 2 and digest(target) == before
    # A requeued sweep (resume=auto) finds its jobs complete: their records stay byte for byte, no new event file.
    records = {p: p.read_bytes() for p in folder.glob("*/metrics.json")}
    configs = {p: p.read_bytes() for p in folder.glob("*/.hydra/*.yaml")}  # each job's own overrides and config
    assert len(configs) == 6
    events = sorted(folder.glob("*/events.out.tfevents.*"))
    proc = run_cli([*sweep, "resume=auto", "hydra.sweep.dir=outputs/sweep"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in folder.glob("*/metrics.json")} == records
    assert {p: p.read_bytes() for p in folder.glob("*/.hydra/*.yaml")} == configs
    assert sorted(folder.glob("*/events.out.tfevents.*")) == events
    # ... and with more steps it continues every job where it stopped (its .hydra/ kept, as a single run's).
    proc = run_cli([*sweep, "steps=4", "resume=auto", "hydra.sweep.dir=outputs/sweep"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert {p: p.read_bytes() for p in folder.glob("*/.hydra/*.yaml")} == configs
    assert [(read_metrics(p.parent)["status"], read_metrics(p.parent)["step"])
            for p in sorted(folder.glob("*/metrics.json"))] == [("completed", 4), ("completed", 4)]
    assert "resumed from" in proc.stdout


def test_resume_auto_starts_a_run_where_there_is_none_and_continues_it(tmp_cwd):
    args = ["train", *OVER, "resume=auto", "hydra.run.dir=outputs/job"]
    assert run_cli(args, tmp_cwd).returncode == 0
    job = tmp_cwd / "outputs" / "job"
    assert read_metrics(job)["step"] == 4
    proc = run_cli([*args, "steps=6"], tmp_cwd)
    assert proc.returncode == 0 and read_metrics(job)["step"] == 6, proc.stderr
    before = digest(job)
    proc = run_cli([*args, "steps=6"], tmp_cwd)  # the job requeued once more: nothing to do, nothing written
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stderr
    assert digest(job) == before


def test_a_no_op_resume_leaves_every_file_as_it_was(run_dir, tmp_cwd):
    before = digest(run_dir)
    for args in (["resume=outputs/run"], ["resume=outputs/run", "steps=3"], [f"resume={run_dir / 'checkpoints'}"],
                 ["resume=outputs/run", "hydra.run.dir=outputs/run"]):
        proc = run_cli(["train", *args], tmp_cwd)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert "nothing to do" in proc.stdout and "step 4" in proc.stdout
        assert digest(run_dir) == before


def test_resume_into_another_runs_directory_is_refused(run_dir, tmp_cwd):
    other = tmp_cwd / "outputs" / "other"
    shutil.copytree(run_dir, other)
    before = digest(other)
    proc = run_cli(["train", "steps=6", "resume=outputs/run", "hydra.run.dir=outputs/other"], tmp_cwd)
    assert_one_line_error(proc, f"{other} holds another run")
    assert proc.returncode == 2 and digest(other) == before


def test_a_sweep_over_a_resumed_run_is_refused(run_dir, tmp_cwd):
    before = digest(run_dir)
    proc = run_cli(["train", "-m", "resume=outputs/run", "steps=6,8"], tmp_cwd)
    assert_one_line_error(proc, "resume=outputs/run continues one run and cannot be swept", "drop -m")
    assert proc.returncode == 2 and digest(run_dir) == before


# ---------------------------------------------------------------------------------------------------- resume paths


@pytest.mark.parametrize("name", ["with space/run", "rün/ジョブ"])
def test_resume_takes_the_paths_hydra_run_dir_takes(finished, tmp_cwd, name):
    folder = tmp_cwd / "outputs" / name
    proc = run_cli(["train", *tiny_overrides("mlp", dataset="grid25", steps=2), f"hydra.run.dir='outputs/{name}'"],
                   tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    for i, value in enumerate((f"'{folder}'", str(folder))):  # quoted as for hydra.run.dir, and as a shell hands it
        proc = run_cli(["train", f"steps={3 + i}", f"resume={value}"], tmp_cwd)
        assert proc.returncode == 0, proc.stderr
        assert read_metrics(folder)["step"] == 3 + i and read_metrics(folder)["status"] == "completed"


def test_damaged_last_and_prev_name_the_intact_best(run_dir, tmp_cwd):
    ckpts = run_dir / "checkpoints"
    for name in ("last.pt", "prev.pt"):
        (ckpts / name).write_bytes((ckpts / name).read_bytes()[:300])
    best_step = checkpoint.load(ckpts / "best.pt")["step"]
    before = digest(run_dir)
    for resume in ("outputs/run", "auto"):
        extra = ["hydra.run.dir=outputs/run"] if resume == "auto" else []
        proc = run_cli(["train", *OVER, "steps=6", f"resume={resume}", *extra], tmp_cwd)
        best = "outputs/run/checkpoints/best.pt"  # as the command line named the run
        assert_one_line_error(proc, "prev.pt", "damaged", f"{best} (step {best_step}", f"resume={best}")
        assert "falls back" not in proc.stderr  # no promise of a fallback that fails
        assert digest(run_dir) == before
    proc = run_cli(["train", "steps=6", f"resume={ckpts / 'best.pt'}"], tmp_cwd)  # the way on it names works
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(run_dir)["step"] == 6 and checkpoint.load(ckpts / "last.pt")["step"] == 6


# ---------------------------------------------------------------------------------------------------- one line


@pytest.mark.parametrize("args,needles", [
    (["sample", "outputs/run", "--n", "4", "--out", "a_file"], ["--out a_file is a file"]),
    (["sample", "outputs/run", "--n", "4", "--out", "a_file/sub"], ["a_file is not a writable directory"]),
    (["sample", "outputs/run", "--n", "4", "--out", "earlier"], ["holds images of an earlier", "--force"]),
    (["sample", "outputs/run", "--n", "100000000", "--out", "new"], ["--n 100000000 is above 50,000", "--force"]),
    (["sample", "a_file", "--n", "4", "--out", "new"], ["a_file is a file, not a run directory"]),
    (["sample", "outputs/run", "--n", "4", "--out", "new", "--checkpoint", "outputs"], ["(a directory)"]),
    (["eval", "outputs/run", "metrics.num_fake=1000000"], ["metrics.num_fake=1000000 is above 50,000"]),
    (["eval", "outputs/nope"], ["does not exist"]),
    (["eval", "outputs"], ["not a ganbench run directory"]),
    (["eval", "a_file"], ["is a file, not a run directory"]),
    (["eval", "outputs/run", "--checkpoint", "a_file"], ["corrupt or truncated"]),
    (["report", "a_file"], ["is not a directory"]),
    (["report", "outputs/run", "--out", "a_file"], ["cannot create --out a_file"]),
    (["report", "empty"], ["holds no runs"]),
    (["features", "fit", "dataset=folder", "dataset.root=a_file"], ["a_file"]),
    (["train", *OVER, "resume=a_file"], ["a_file"]),
    (["train", *OVER, "hydra.run.dir=a_file"], ["not a writable directory"]),
])
def test_bad_paths_of_every_command_are_one_line(run_dir, tmp_cwd, args, needles):
    (tmp_cwd / "a_file").write_text("not what was asked for")
    (tmp_cwd / "earlier").mkdir()
    (tmp_cwd / "earlier" / "grid.png").write_bytes(b"an earlier grid")
    (tmp_cwd / "empty").mkdir()
    before = digest(tmp_cwd)
    proc = run_cli(args, tmp_cwd)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2 and digest(tmp_cwd) == before


def test_report_reads_what_it_can_and_says_what_it_could_not(run_dir, tmp_cwd):
    sweep = tmp_cwd / "outputs"
    bad = {"0_shape": '{"step": 4, "status": "completed", "metrics": "x"}', "1_json": '{"step": 4, "sta',
           "2_empty": ""}
    for name, text in bad.items():
        shutil.copytree(run_dir, sweep / name)
        (sweep / name / "metrics.json").write_text(text)
    shutil.copytree(run_dir, sweep / "3_dir")
    (sweep / "3_dir" / "metrics.json").unlink()
    (sweep / "3_dir" / "metrics.json").mkdir()  # root reads any file: a directory is what cannot be read
    shutil.copytree(run_dir, sweep / "4_missing")
    (sweep / "4_missing" / "metrics.json").unlink()
    proc = run_cli(["report", "outputs"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    md = (sweep / "report.md").read_text()
    assert "| completed | 4 |" in md  # the intact run has its row
    for name, why in (("0_shape", "its 'metrics' is malformed (a JSON string)"), ("1_json", "not valid JSON"),
                      ("2_empty", "it is empty"), ("3_dir", "it is a directory")):
        assert f"- `{name}` (unreadable): metrics.json cannot be read: {why}" in md, md
    assert "- `4_missing` (missing)" in md


def test_eval_refuses_a_damaged_metrics_json_before_computing(run_dir, tmp_cwd):
    (run_dir / "metrics.json").write_text('{"step": 4, "metrics": "x"}')
    before = digest(run_dir)
    proc = run_cli(["eval", "outputs/run"], tmp_cwd)
    assert_one_line_error(proc, "outputs/run/metrics.json cannot be read: its 'metrics' is malformed", "restore it")
    assert proc.returncode == 2 and digest(run_dir) == before


# ---------------------------------------------------------------------------------------------------- runaway sizes


@pytest.mark.parametrize("extra", [["batch_size=1048576"], ["g_batch_size=1048576"]])
def test_sizes_that_cannot_fit_are_refused_before_anything_is_written(tmp_cwd, extra):
    """Sizes within each knob's bounds whose product cannot fit (1024² RGB images, tens of TB at a batch of 2²⁰):
    one line, exit 2, nothing written (not the kernel's OOM killer minutes later)."""
    (tmp_cwd / "imgs").mkdir()
    images = ["dataset=folder", "dataset.root=imgs", "dataset.resolution=1024", "model=dcgan", "batch_size=8",
              "steps=2", "device=cpu", "cpu_threads=1"]
    proc = run_cli(["train", *images, *extra, "hydra.run.dir=outputs/run"], tmp_cwd)
    assert_one_line_error(proc, "GiB of memory", "lower batch_size")
    assert proc.returncode == 2 and not (tmp_cwd / "outputs").exists()


# ---------------------------------------------------------------------------------------------------- Ctrl-C


CTRL_C = r"""
import os, signal, sys
from ganbench import cli, config, rundir, train
point = sys.argv[1]


def interrupt_then(function):
    def wrapped(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return function(*args, **kwargs)
    return wrapped


if point == "checks":  # while the command line is checked, before torch loads
    config.prepare_argv = interrupt_then(config.prepare_argv)
elif point == "lock":  # while Hydra starts the job: the run directory's lock
    rundir.hold = interrupt_then(rundir.hold)
elif point == "build":  # while the run builds its models, before the loop takes SIGINT over
    train.build = interrupt_then(train.build)
elif point == "exec":  # inside code that exec builds from a string, as torch's import builds its dataclasses
    config.prepare_argv = lambda *args, **kwargs: exec("raise KeyboardInterrupt")
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["checks", "lock", "build", "exec"])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_cwd, point):
    """Run as `python -m`, as torchrun runs ganbench: its exit status is the one CPython can turn into a SIGINT."""
    (tmp_cwd / "ctrl_c.py").write_text(CTRL_C)
    proc = subprocess.run([sys.executable, "-m", "ctrl_c", point, "train", *OVER, "hydra.run.dir=outputs/run"],
                          cwd=tmp_cwd, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "interrupted (Ctrl-C)")
    assert proc.returncode == 130
    run_dir = tmp_cwd / "outputs" / "run"
    if point == "build":  # the job had started: its record says so, and the directory can be resumed or reused
        assert read_metrics(run_dir)["status"] == "interrupted"
    elif point in ("checks", "exec"):
        assert not run_dir.exists()


def test_ctrl_c_from_outside_during_start_up(tmp_cwd):
    """A real SIGINT from another process while `ganbench train` imports and composes."""
    proc = subprocess.Popen([sys.executable, "-m", "ganbench.cli", "train", *OVER, "hydra.run.dir=outputs/run"],
                            cwd=tmp_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if proc.returncode != 0:  # it had not finished within the second (it takes several): one line, exit 130
        assert_one_line_error(result, "interrupted (Ctrl-C)")
        assert proc.returncode == 130


def test_the_seed_rule_is_one_function():
    from ganbench import rundir

    assert rundir.step_seed(3, 250) == 3 * 1_000_003 + 250 and rundir.step_seed(0, 7) == 7
