"""`ganbench` as a user runs it: exit codes, one-line errors, signals, multirun. A fresh process per case, except the
bad-override table, which goes through the same `cli.main()` in-process (a few of its cases also in a fresh process)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import read_metrics, run_cli, tiny_overrides

from ganbench import checkpoint, cli


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ganbench: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_default_train_runs(tmp_cwd):
    """`ganbench train` with the default config (mnist_mini + dcgan + hinge + sn), only shorter."""
    proc = run_cli(["train", "steps=4", "log_every=2", "sample_every=2", "ckpt_every=2", "metrics.num_fake=500",
                    "hydra.run.dir=outputs/run"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_cwd / "outputs" / "run"
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["step"] == 4
    assert record["config"]["dataset"]["_target_"] == "ganbench.data.mnist_mini"
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert (run_dir / "samples" / "step_0000004.png").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))


BAD_CONFIG = [
    (["loss=nope"], ["unknown loss 'nope'", "wgan_gp", "hinge"]),
    (["constraint=spectral"], ["unknown constraint 'spectral'", "gran"]),
    (["dataset=imagenet"], ["unknown dataset 'imagenet'", "mnist_mini"]),
    (["model=biggan"], ["unknown model 'biggan'", "sngan_resnet"]),
    (["stepz=10"], ["unknown config key 'stepz'"]),
    (["steps=-1"], ["steps must be a positive integer"]),
    (["steps=abc"], ["steps must be a positive integer"]),
    (["batch_size=0"], ["batch_size must be a positive integer"]),
    (["-m", "loss=hinge,nope"], ["unknown loss 'nope'"]),
    (["device=tpu"], ["device must be"]),
    (["ema_decay=1.5"], ["ema_decay"]),
    (["instance_noise.std=-1"], ["instance_noise.std must be a number ≥ 0"]),
    (["instance_noise.until=0"], ["instance_noise.until must be a number in (0, 1]"]),
    (["+instance_noise.sigma=1"], ["instance_noise takes exactly two keys, std and until"]),
    (["optim.lr_d=-1"], ["optim.lr_d must be a positive number"]),
    (["resume=does/not/exist"], ["does/not/exist does not exist"]),
    (["n_dis=0"], ["n_dis must be a positive integer"]),
    (["seed=-3"], ["seed must be a non-negative integer"]),
    (["g_batch_size=0"], ["g_batch_size must be null or a positive integer"]),
    (["log_every=0"], ["log_every must be a positive integer"]),
    (["eval_samples=0"], ["eval_samples must be a positive integer"]),
    (["batch_size=1.5"], ["batch_size must be a positive integer"]),
    (["steps=1e3"], ["steps must be a positive integer"]),
    (["optim.decay=cosine"], ["optim.decay must be 'none' or 'linear'"]),
    (["optim.decay_to=1.5"], ["optim.decay_to must be a number in [0, 1]"]),
    (["optim.warmup=-1"], ["optim.warmup must be a whole number of steps"]),
    (["optim.warmup=0.5"], ["optim.warmup must be a whole number of steps"]),
    (["nan_policy=ignore"], ["nan_policy must be 'stop'"]),
    (["device=cuda:x"], ["device must be"]),
    (["+stepz=3"], ["unknown config key 'stepz'"]),
    (["optim=sgd"], ["unknown optim 'sgd'", "adam", "rmsprop"]),
    (["loss=hinge", "loss.margin=2"], ["unknown config key 'loss.margin'"]),
    (["steps="], ["steps must be a positive integer"]),
    (["loss=[hinge"], ["cannot parse the overrides"]),
    (["hydra.run.dir=a_file/run"], ["not a writable directory"]),
    (["dataset=folder", "dataset.root=.", "dataset.resolution=0"], ["dataset.resolution must be a positive integer"]),
    (["dataset=folder", "dataset.root=.", "dataset.max_images=0"], ["dataset.max_images must be null or a positive"]),
    (["dataset=folder", "dataset.root=a_file"], ["dataset.root=a_file is a file, not a folder"]),
    (["optim.betas=[2,0.9]"], ["optim.betas must be two numbers in [0, 1)", "got [2.0, 0.9]"]),
    (["optim.betas=[]"], ["optim.betas must be two numbers"]),
    (["dataset=folder", "dataset.root=.", "dataset.channels=5"], ["dataset.channels must be 1 or 3", "got 5"]),
    (["model=mlp", "model.generator.hidden=0"], ["model.generator.hidden must be a positive integer"]),
    (["model=mlp", "model.discriminator.depth=0"], ["model.discriminator.depth must be a positive integer"]),
    (["model.z_dim=0"], ["model.z_dim must be a positive integer"]),
    (["batch_size=1000000000"], ["batch_size must be a positive integer ≤ 1,048,576"]),
    (["batch_size=20000"], ["batch_size=20000 is larger than the dataset (10000 images)"]),
    (["loss=ganqp", "loss.lam=-1"], ["loss.lam must be a positive number, got -1.0"]),
    (["constraint=gran", "constraint.K=nan"], ["constraint.K must be a positive number, got nan"]),
    (["dataset.resolution=64"], ["dataset.resolution must be 28 or 32"]),
    (["dataset=cifar10"], ["dataset.download=false", "dataset=folder"]),
    (["progress=2"], ["progress must be true or false, got 2"]),
    (["model=mlp", "-m", "model.generator.depth=2,0"], ["model.generator.depth must be a positive integer"]),
]


@pytest.mark.parametrize("args,needles", BAD_CONFIG)
def test_bad_config_is_one_clear_line(tmp_cwd, capsys, args, needles):
    """Each bad override is refused before anything starts: exit 2, one line, nothing written. In-process, through the
    `main()` the `ganbench` script calls (a fresh process per case cost ~5 s of imports each); the fresh-process path
    is checked on a few of these cases below."""
    (tmp_cwd / "a_file").write_text("not a directory")
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert_one_line_error(SimpleNamespace(returncode=code, stdout=out, stderr=err), *needles)
    assert not (tmp_cwd / "outputs").exists()  # nothing started, nothing written


# The fresh-process path on three kinds of case: an unknown group option, a bad value inside a -m sweep, and a run
# directory that cannot be made (picked by their first override, not by position in BAD_CONFIG).
FRESH_PROCESS_CASES = [c for c in BAD_CONFIG if c[0][0] in ("loss=nope", "-m", "hydra.run.dir=a_file/run")]


def test_fresh_process_cases_are_found():
    assert len(FRESH_PROCESS_CASES) == 3


@pytest.mark.parametrize("args,needles", FRESH_PROCESS_CASES)
def test_bad_config_is_one_clear_line_from_a_fresh_process(tmp_cwd, args, needles):
    (tmp_cwd / "a_file").write_text("not a directory")
    proc = run_cli(["train", *args], tmp_cwd)
    assert_one_line_error(proc, *needles)
    assert not (tmp_cwd / "outputs").exists()


@pytest.mark.parametrize("args", [["loss=nope"], ["-m", "loss=hinge,nope"], ["metrics.names=[fud]"], ["steps=0"]])
def test_bad_config_is_refused_before_torch_loads(tmp_cwd, args):
    """The command line is checked before torch is imported (torch alone costs seconds), so the refusal is quick."""
    code = ("import sys; from ganbench import cli; rc = cli.main(['train', *sys.argv[1:]]); "
            "print('rc', rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_cwd, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["rc", "2", "False"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("ganbench: error: ") and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needles", [
    (["dataset=folder", "dataset.root=missing_dir"], ["missing_dir"]),
    (["dataset=mnist"], ["dataset=folder"]),
    (["model=dcgan", "dataset=grid25"], ["model=mlp"]),
    (["dataset=grid25", "model=mlp", "device=cuda"] if not torch.cuda.is_available() else ["batch_size=20000"],
     ["device=cuda" if not torch.cuda.is_available() else "batch_size"]),
    (["batch_size=20000"], ["batch_size=20000 is larger than the dataset"]),
    (["dataset=folder"], ["dataset.root"]),
    (["dataset=folder", "dataset.root=empty_dir"], ["empty_dir"]),
    (["dataset=folder", "dataset.root=text_only"], ["text_only"]),
    (["dataset=cifar10"], ["dataset=folder"]),
    (["model=sngan_cnn", "dataset=ring8"], ["model=mlp"]),
    (["model=dcgan", "model.generator.ch=abc"], ["generator"]),
])
def test_bad_run_input_is_one_clear_line(tmp_cwd, args, needles):
    (tmp_cwd / "empty_dir").mkdir()
    (tmp_cwd / "text_only" / "a").mkdir(parents=True)
    for i in range(3):
        (tmp_cwd / "text_only" / "a" / f"{i}.png").write_text("not an image")
    proc = run_cli(["train", "steps=2", "hydra.run.dir=outputs/run", *args], tmp_cwd)
    assert_one_line_error(proc, *needles)


def test_corrupt_checkpoint_cli(tmp_cwd):
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    assert run_cli(["train", *over, "hydra.run.dir=outputs/run"], tmp_cwd).returncode == 0
    ckpt = tmp_cwd / "outputs" / "run" / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    before = {p: p.read_bytes() for p in (tmp_cwd / "outputs" / "run").rglob("*") if p.is_file()}
    proc = run_cli(["train", "steps=4", "resume=outputs/run"], tmp_cwd)
    assert_one_line_error(proc, "corrupt or truncated", "start a new run")  # no prev.pt to point at
    after = {p: p.read_bytes() for p in (tmp_cwd / "outputs" / "run").rglob("*") if p.is_file()}
    assert before == after  # nothing already written is lost or changed


def test_malicious_checkpoint_is_refused(tmp_cwd):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    run_dir = tmp_cwd / "outputs" / "evil" / "checkpoints"
    run_dir.mkdir(parents=True)
    torch.save({"format": checkpoint.FORMAT, "step": 1, "evil": Evil()}, run_dir / "last.pt", pickle_module=pickle)
    proc = run_cli(["train", "resume=outputs/evil", *tiny_overrides("mlp", dataset="grid25")], tmp_cwd)
    assert_one_line_error(proc, "refused")
    assert not (tmp_cwd / "pwned").exists()


def test_sigint_saves_a_checkpoint_and_resume_finishes(tmp_cwd):
    over = tiny_overrides("mlp", dataset="grid25", steps=100000, log_every=50, ckpt_every=1000000, eval_every=1000000,
                          sample_every=1000000)
    cmd = [sys.executable, "-m", "ganbench.cli", "train", *over, "hydra.run.dir=outputs/run"]
    proc = subprocess.Popen(cmd, cwd=tmp_cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = tmp_cwd / "outputs" / "run"
    deadline = time.time() + 120
    while time.time() < deadline and not list(events.glob("events.out.tfevents.*")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = checkpoint.load(events / "checkpoints" / "last.pt")
    stopped_at = state["step"]
    assert 0 < stopped_at < 100000
    assert read_metrics(events)["status"] == "interrupted"
    assert "resume=" in out + err
    # Resume to a few steps past where it stopped: it finishes there, with the original settings.
    proc = run_cli(["train", f"steps={stopped_at + 3}", "resume=outputs/run"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    record = read_metrics(events)
    assert record["status"] == "completed" and record["step"] == stopped_at + 3
    assert record["config"]["dataset"]["_target_"] == "ganbench.data.grid25"


def test_multirun_grid(tmp_cwd):
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    proc = run_cli(["train", "-m", *over, "loss=hinge,wgan_gp", "constraint=none,gn", "hydra.sweep.dir=outputs/sweep"],
                   tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent for p in (tmp_cwd / "outputs" / "sweep").glob("*/metrics.json"))
    assert len(runs) == 4
    pairs = {(read_metrics(r)["config"]["loss"]["_target_"], read_metrics(r)["config"]["constraint"]["_target_"])
             for r in runs}
    assert len(pairs) == 4


def test_multirun_failing_job_does_not_stop_the_sweep(tmp_cwd):
    over = [o for o in tiny_overrides("mlp", dataset="grid25", steps=2) if not o.startswith("model")]
    # A convolutional model on a 2D toy: that job fails when it builds its models (the values alone are fine, so the
    # command line passes), the other one runs.
    proc = run_cli(["train", "-m", *over, "model=mlp,dcgan_small", "hydra.sweep.dir=outputs/sweep"], tmp_cwd)
    assert proc.returncode == 1
    assert "1 job(s) of the sweep failed" in proc.stderr and "model=mlp" in proc.stderr
    statuses = sorted(read_metrics(p.parent)["status"] for p in (tmp_cwd / "outputs" / "sweep").glob("*/metrics.json"))
    assert statuses == ["completed", "failed"]


def test_help_and_unknown_command(tmp_cwd):
    assert run_cli([], tmp_cwd).returncode == 2
    proc = run_cli(["frobnicate"], tmp_cwd)
    assert_one_line_error(proc, "unknown command 'frobnicate'")
    proc = run_cli(["train", "--help"], tmp_cwd)
    assert proc.returncode == 0 and "loss" in proc.stdout


def test_resume_with_other_settings_changes_nothing(tmp_cwd):
    over = tiny_overrides("mlp", dataset="grid25", steps=2)
    assert run_cli(["train", *over, "hydra.run.dir=outputs/run"], tmp_cwd).returncode == 0
    run_dir = tmp_cwd / "outputs" / "run"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for bad in (["loss=wgan"], ["constraint=gn"], ["n_dis=3"], ["model.generator.hidden=64"]):
        proc = run_cli(["train", "steps=4", "resume=outputs/run", *bad], tmp_cwd)
        assert_one_line_error(proc, "was made with", "resume with the same settings")
    proc = run_cli(["train", "steps=4", "resume=outputs/empty"], tmp_cwd)  # no such run
    assert_one_line_error(proc, "does not exist")
    (tmp_cwd / "outputs" / "empty").mkdir()
    proc = run_cli(["train", "steps=4", "resume=outputs/empty"], tmp_cwd)  # a dir without checkpoint
    assert_one_line_error(proc, "holds no checkpoint")
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert before == after
