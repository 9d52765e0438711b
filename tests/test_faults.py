"""Faults at the edges: a full disk, two writers in one run dir, damaged checkpoints and caches, kill -9 mid-write, OOM.

Faults are made for real in a child process: ``DRIVER`` runs ``ganbench`` after replacing the one function through
which every file's bytes reach the disk (``checkpoint._write_synced``) by one that, at the n-th write of a file whose
name contains ``file``, raises ENOSPC (and keeps raising: a full disk stays full), SIGKILLs its own process after
writing half the bytes, or blocks on a pipe until the test lets it go. No sleeps: the test and the child synchronise
through pipes.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import select
import subprocess
import sys
import time

import pytest
import torch
from conftest import compose, read_metrics, run_cli, tiny_overrides
from PIL import Image
from test_cli import assert_one_line_error
from test_train import scalars

from ganbench import checkpoint, evaluate, rundir
from ganbench.data import ImageDataset, folder
from ganbench.errors import GanbenchError
from ganbench.launch import ReleaseAtJobEnd
from ganbench.metrics import image
from ganbench.train import run

OVER = tiny_overrides("mlp", dataset="grid25", steps=4)  # checkpoints and evaluations at steps 2 and 4

DRIVER = r"""
import errno, json, os, signal, sys
import torch
from ganbench import checkpoint, cli, train

spec = json.loads(sys.argv[1])
seen = {"n": 0, "tripped": False}
write = checkpoint._write_synced


def faulty(f, data):
    if spec["file"] in os.path.basename(f.name) and not seen["tripped"]:
        seen["n"] += 1
        if seen["n"] == spec["at"]:
            seen["tripped"] = True
            if spec["action"] == "hold":  # tell the test, then wait until it lets us write
                os.write(spec["ready_fd"], b"ready\n")
                os.read(spec["go_fd"], 1)
            elif spec["action"] == "kill":  # die mid-write: half the bytes are on disk
                f.write(bytes(data[: len(data) // 2]))
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
    if seen["tripped"] and spec["action"] == "enospc":  # the disk is full from now on: part of it, then ENOSPC
        f.write(bytes(data[: len(data) // 3]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    write(f, data)


checkpoint._write_synced = faulty

if spec["action"] == "tensorboard_full":  # TensorBoard's writer thread finds the disk full at its n-th append
    from tensorboard.compat.tensorflow_stub.io import gfile

    append, appends = gfile.LocalFileSystem.append, {"n": 0}

    def full_append(self, *args, **kwargs):
        appends["n"] += 1
        if appends["n"] >= spec["at"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return append(self, *args, **kwargs)

    gfile.LocalFileSystem.append = full_append

if spec["action"] == "oom":  # the n-th D step runs out of (fake CUDA) memory
    d_step, calls = train.d_step, {"n": 0}

    def oom_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == spec["at"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake, on the CPU)")
        return d_step(*args, **kwargs)

    train.d_step = oom_step

sys.exit(cli.main(sys.argv[2:]))
"""


def drive(cwd, spec: dict, args: list[str], env_extra: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``ganbench ARGS`` in a child process with the fault ``spec`` installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def files(run_dir) -> dict:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def temps(folder_) -> list:
    return [p.name for p in folder_.rglob("*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed run of OVER: the checkpoints and records every disturbed run is compared with."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_cli(["train", *OVER, "hydra.run.dir=outputs/run"], cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd / "outputs" / "run"


# ---------------------------------------------------------------------------------------------------- a full disk


def train_on_a_full_disk(cwd, file: str, at: int):
    """`ganbench train OVER` into outputs/run, the disk full from the at-th write of a file named like ``file``."""
    proc = finish(drive(cwd, {"file": file, "at": at, "action": "enospc"},
                        ["train", *OVER, "hydra.run.dir=outputs/run"]))
    return proc, cwd / "outputs" / "run"


def test_disk_full_at_a_checkpoint_names_the_file_and_the_last_good_one(tmp_cwd, reference):
    proc, run_dir = train_on_a_full_disk(tmp_cwd, "last.pt", at=2)
    last = run_dir / "checkpoints" / "last.pt"
    assert_one_line_error(proc, f"cannot write {last}: no space left on device",
                          f"the last good checkpoint (step 2) is {last}; free some space, then continue with: "
                          f"ganbench train resume={run_dir}")
    assert proc.returncode == 1
    # The step-2 checkpoint is exactly the undisturbed run's and no temp file is left. metrics.json is whole: the
    # step-4 evaluation's record (written before the failed checkpoint; the final write found the disk full).
    assert last.read_bytes() == (reference / "checkpoints" / "prev.pt").read_bytes()
    assert not (run_dir / "checkpoints" / "prev.pt").exists()
    assert temps(run_dir) == []
    assert read_metrics(run_dir)["history"] == read_metrics(reference)["history"]


def test_disk_full_before_any_checkpoint_says_none_was_written(tmp_cwd):
    proc, run_dir = train_on_a_full_disk(tmp_cwd, "last.pt", at=1)
    assert_one_line_error(proc, "checkpoints/last.pt: no space left on device",
                          "no checkpoint had been written yet; free some space and start the run again")
    assert list((run_dir / "checkpoints").iterdir()) == []
    assert temps(run_dir) == []


def test_disk_full_at_metrics_json_keeps_the_previous_record(tmp_cwd, reference):
    proc, run_dir = train_on_a_full_disk(tmp_cwd, "metrics.json", at=2)
    assert_one_line_error(proc, f"cannot write {run_dir / 'metrics.json'}: no space left on device",
                          "last good checkpoint (step 2)")
    record = read_metrics(run_dir)  # the step-2 record, whole
    assert record["step"] == 2 and record["history"] == read_metrics(reference)["history"][:1]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == (reference / "checkpoints" / "prev.pt").read_bytes()
    assert temps(run_dir) == []


def test_disk_full_at_a_sample_grid_leaves_no_partial_png(tmp_cwd, reference):
    proc, run_dir = train_on_a_full_disk(tmp_cwd, "step_", at=2)
    png = run_dir / "samples" / "step_0000004.png"
    assert_one_line_error(proc, f"cannot write {png}: no space left on device",
                          f"the last good checkpoint (step 2) is {run_dir / 'checkpoints' / 'last.pt'}")
    assert proc.returncode == 1
    assert not png.exists() and temps(run_dir) == []  # no truncated grid; the step-2 one is the reference's
    first = "samples/step_0000002.png"
    assert (run_dir / first).read_bytes() == (reference / first).read_bytes()


def test_disk_full_in_tensorboards_writer_thread_is_one_line_too(tmp_cwd):
    over = tiny_overrides("mlp", dataset="grid25", steps=200, ckpt_every=2, eval_every=1000, sample_every=1000)
    proc = finish(drive(tmp_cwd, {"file": "(no file)", "at": 40, "action": "tensorboard_full"},
                        ["train", *over, "hydra.run.dir=outputs/run"]))
    run_dir = tmp_cwd / "outputs" / "run"
    assert_one_line_error(proc, f"cannot write into {run_dir}: no space left on device; the last good checkpoint",
                          f"continue with: ganbench train resume={run_dir}")  # no thread traceback on stderr
    step = checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < step < 200 and f"(step {step})" in proc.stderr and temps(run_dir) == []


def test_write_failed_is_one_line_and_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text('{"step": 1}')

    def full(f, data):
        f.write(bytes(data[:3]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_synced", full)
    with pytest.raises(checkpoint.WriteFailed, match="no space left on device") as info:
        checkpoint.atomic_write_bytes(path, lambda f: f.write(b'{"step": 2}'))
    assert isinstance(info.value, OSError) and info.value.errno == 28  # a cache writer's `except OSError` holds
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)  # crosses a launcher's process boundary
    assert path.read_text() == '{"step": 1}' and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(checkpoint.WriteFailed, match="last.pt: no space"):
        checkpoint.save({"step": 3}, tmp_path / "checkpoints")
    assert list((tmp_path / "checkpoints").iterdir()) == []


# ---------------------------------------------------------------------------------------------------- two writers


def test_a_second_process_in_a_busy_run_dir_exits_at_once_and_writes_nothing(tmp_cwd, reference):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    spec = {"file": "last.pt", "at": 1, "action": "hold", "ready_fd": ready_w, "go_fd": go_r}
    first = drive(tmp_cwd, spec, ["train", *OVER, "hydra.run.dir=outputs/run"], pass_fds=(ready_w, go_r))
    os.close(ready_w)
    os.close(go_r)
    try:
        readable, _, _ = select.select([ready_r], [], [], 300)
        assert readable and os.read(ready_r, 16) == b"ready\n", finish(first).stderr
        # The first run is now inside its step-2 checkpoint write, holding the lock.
        run_dir = tmp_cwd / "outputs" / "run"
        before = files(run_dir)
        t0 = time.perf_counter()
        second = run_cli(["train", *OVER, "steps=6", "hydra.run.dir=outputs/run"], tmp_cwd)
        elapsed = time.perf_counter() - t0
        assert_one_line_error(second, f"run directory {run_dir} is in use by ganbench process {first.pid}")
        assert second.returncode == 2 and "Traceback" not in second.stdout
        after = files(run_dir)
        events = {k for k in before if k.startswith("events.out.tfevents")}  # the first run's, flushed by its thread
        assert after.keys() == before.keys()
        assert {k: v for k, v in after.items() if k not in events} == {k: v for k, v in before.items()
                                                                        if k not in events}
        assert elapsed < 30  # measured 0.1 s alone: refused before torch and Hydra are imported
        print(f"second process exited after {elapsed:.2f} s")
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        os.close(ready_r)
    proc = finish(first)
    assert proc.returncode == 0, proc.stderr
    # The first run ends exactly as an undisturbed one.
    for name in ("last.pt", "prev.pt", "best.pt"):
        assert (run_dir / "checkpoints" / name).read_bytes() == (reference / "checkpoints" / name).read_bytes()
    a, b = read_metrics(reference), read_metrics(run_dir)
    a.pop("wall_time_s"), b.pop("wall_time_s")
    assert a == b
    assert scalars(run_dir)["loss/d"] == scalars(reference)["loss/d"]
    assert (run_dir / ".ganbench.lock").read_text().strip() == str(first.pid)


def test_the_lock_is_released_and_each_multirun_job_takes_its_own(tmp_cwd):
    proc = run_cli(["train", "-m", *tiny_overrides("mlp", dataset="grid25", steps=2), "seed=0,1",
                    "hydra.sweep.dir=outputs/sweep"], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((tmp_cwd / "outputs" / "sweep").glob("*/metrics.json"))
    assert [read_metrics(p.parent)["status"] for p in jobs] == ["completed", "completed"]
    locks = {(p.parent / ".ganbench.lock").read_text() for p in jobs}
    assert len(locks) == 1  # both written by the one process that ran the sweep, one after the other
    # That process has exited: its locks are free.
    for p in jobs:
        rundir.RunLock(p.parent).acquire().release()


def test_a_busy_sweep_job_dir_is_refused_before_hydra_writes_into_it(tmp_cwd):
    """The log-file handler's lock (a sweep's job dirs are not on the command line, so refuse_if_busy cannot see
    them)."""
    job_dir = tmp_cwd / "outputs" / "sweep" / "job"
    held = rundir.RunLock(job_dir).acquire()
    try:
        before = files(job_dir)
        proc = run_cli(["train", "-m", *tiny_overrides("mlp", dataset="grid25", steps=2), "seed=0",
                        "hydra.sweep.dir=outputs/sweep", "hydra.sweep.subdir=job"], tmp_cwd)
        assert_one_line_error(proc, f"run directory {job_dir} is in use by ganbench process {os.getpid()}")
        assert proc.returncode == 2 and files(job_dir) == before  # no .hydra/, no train.log, no metrics.json
    finally:
        held.release()


def test_the_lock_conflicts_on_its_own_and_the_job_end_callback_releases_it(tmp_path):
    rundir.hold(tmp_path)
    assert rundir.hold(tmp_path) is rundir.hold(tmp_path)  # idempotent: the log handler, then the task
    with pytest.raises(rundir.RunDirBusy, match=f"is in use by ganbench process {os.getpid()}"):
        rundir.RunLock(tmp_path).acquire()  # another open file description: flock says no, even in-process
    ReleaseAtJobEnd().on_job_end(config=None, job_return=None)
    rundir.RunLock(tmp_path).acquire().release()


def test_a_filesystem_without_locks_runs_unprotected_with_one_warning(tmp_path, monkeypatch, caplog):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="ganbench"):
        lock = rundir.RunLock(tmp_path).acquire()
    assert "cannot lock the run directory" in caplog.text and "would not be stopped" in caplog.text
    assert lock.fd is not None  # held (without a lock): the run goes on
    os.close(lock.fd)


def test_train_log_on_a_full_disk_stays_quiet(tmp_path, capsys):
    handler = rundir.RunLogFile(str(tmp_path / "train.log"))

    def full(text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    handler.stream.write = full
    handler.emit(logging.makeLogRecord({"msg": "step 1"}))
    assert capsys.readouterr().err == ""  # not logging's '--- Logging error ---' traceback
    handler.close()


# ---------------------------------------------------------------------------------------------------- divergence


def test_divergence_before_any_checkpoint_says_so(tmp_path):
    cfg = compose(tiny_overrides("mlp", dataset="grid25", steps=30, log_every=1, ckpt_every=10, eval_every=1000,
                                 sample_every=1000) + ["optim.lr_d=1", "optim.lr_g=1", "loss=wgan", "constraint=none",
                                                        "optim.betas=[0.5,0.999]", "dataset.spacing=1e38"])
    # A real divergence within the knobs' bounds (lr ≤ 1): grid25's modes at ±2·10³⁸, near float32's largest number,
    # and an unconstrained critic whose weights Adam grows by lr each step: D's output overflows before step 10.
    with pytest.raises(GanbenchError, match="training diverged.*no checkpoint had been written yet") as info:
        run(cfg, tmp_path)
    assert "step 0" not in str(info.value) and "kept in" not in str(info.value)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert read_metrics(tmp_path)["status"] == "diverged"


# ---------------------------------------------------------------------------------------------------- damaged files


@pytest.fixture
def ckpt_dir(tmp_path):
    d = tmp_path / "checkpoints"
    checkpoint.save({"step": 1, "w": torch.ones(3)}, d)
    checkpoint.save({"step": 2, "w": torch.ones(3)}, d)
    return d


def test_each_bad_checkpoint_has_its_own_message(tmp_path, ckpt_dir):
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    cases = {
        "missing": (tmp_path / "nope.pt", "does not exist; start a new run"),
        "directory": (tmp_path, "is a directory"),
        "empty": (tmp_path / "empty.pt", "is empty"),
        "garbage": (tmp_path / "garbage.pt", "is corrupt or truncated (not a torch.save archive)"),
        "truncated": (tmp_path / "cut.pt", "is corrupt or truncated (a zip archive without its end"),
    }
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "cut.pt").write_bytes(last.read_bytes()[:200])
    for name, (path, needle) in cases.items():
        with pytest.raises(checkpoint.DamagedCheckpoint) as info:
            checkpoint.load(path)
        assert needle in str(info.value), (name, str(info.value))
        assert "prev.pt" not in str(info.value), name  # no prev.pt next to these files: never point at one
    # A damaged last.pt with a prev.pt next to it points at that prev.pt.
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(GanbenchError, match=f"{prev} holds the checkpoint before it .resume=auto falls back to it"):
        checkpoint.load(last)
    # A missing prev.pt is "does not exist", not "corrupt", and does not point at itself.
    prev.unlink()
    with pytest.raises(GanbenchError) as info:
        checkpoint.load(prev)
    assert "does not exist" in str(info.value) and "corrupt" not in str(info.value)
    assert f"{prev} holds" not in str(info.value)


def test_code_carrying_and_foreign_files_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    torch.save({"format": checkpoint.FORMAT, "evil": Evil()}, tmp_path / "evil.pt", pickle_module=pickle)
    torch.save({"step": 1}, tmp_path / "foreign.pt")
    with pytest.raises(GanbenchError, match="was refused: it holds objects other than tensors"):
        checkpoint.load(tmp_path / "evil.pt")
    with pytest.raises(GanbenchError, match="is not a ganbench checkpoint"):
        checkpoint.load(tmp_path / "foreign.pt")
    # resume=auto does not skip a code-carrying last.pt: it is not damage.
    (tmp_path / "checkpoints").mkdir()
    checkpoint.save({"step": 1}, tmp_path / "checkpoints")
    (tmp_path / "evil.pt").rename(tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(GanbenchError, match="refused"):
        rundir.load_latest(tmp_path)


def test_load_latest_falls_back_to_prev_with_a_warning(tmp_path, ckpt_dir, caplog):
    assert rundir.load_latest(tmp_path / "elsewhere") is None
    state, path = rundir.load_latest(tmp_path)
    assert (state["step"], path.name) == (2, "last.pt")
    last, prev = ckpt_dir / "last.pt", ckpt_dir / "prev.pt"
    last.write_bytes(last.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="ganbench"):
        state, path = rundir.load_latest(tmp_path)
    assert (state["step"], path) == (1, prev)
    assert f"checkpoint {last} is corrupt or truncated" in caplog.text and f"resuming from {prev}" in caplog.text
    # The next save overwrites the damaged last.pt instead of rotating it over the good prev.pt.
    checkpoint.save({"step": 3}, ckpt_dir)
    assert checkpoint.load(prev)["step"] == 1 and checkpoint.load(last)["step"] == 3
    # Without a prev.pt to fall back to, a damaged last.pt is an error.
    prev.unlink()
    last.write_bytes(b"")
    with pytest.raises(checkpoint.DamagedCheckpoint, match="is empty"):
        rundir.load_latest(tmp_path)


def test_resume_auto_continues_from_prev_when_last_is_damaged(tmp_path, caplog):
    over = tiny_overrides("mlp", dataset="grid25", steps=4)
    run(compose(over + ["steps=6"]), tmp_path / "straight")
    run(compose(over), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    # An explicit resume=PATH keeps refusing, and says where the good checkpoint is.
    with pytest.raises(GanbenchError, match="corrupt or truncated.*prev.pt holds the checkpoint before it"):
        run(compose(over + ["steps=6", f"resume={tmp_path / 'run'}"]), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ganbench"):
        run(compose(over + ["steps=6", "resume=auto"]), tmp_path / "run")
    assert "resuming from" in caplog.text and "prev.pt (step 2)" in caplog.text
    a, b = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "run")
    assert b["status"] == "completed" and b["step"] == 6 and a["history"] == b["history"]
    assert checkpoint.load(last)["step"] == 6 and checkpoint.load(last.with_name("prev.pt"))["step"] == 4


def test_a_damaged_run_config_or_overrides_file_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    checkpoint.save({"step": 1}, run_dir / "checkpoints")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- a: [\n")
    with pytest.raises(GanbenchError, match="the run's overrides .*overrides.yaml is damaged and cannot be read"):
        rundir.prepare_train(["steps=4", f"resume={run_dir}"])
    for text, needle in (("x: [\n", "cannot be read"), ("", "empty"), ("a: 1\n", "no dataset or model")):
        (run_dir / ".hydra" / "config.yaml").write_text(text)
        with pytest.raises(GanbenchError, match=f"the run's config .*config.yaml is damaged.*{needle}"):
            evaluate.run_config(run_dir)


# ---------------------------------------------------------------------------------------------------- caches


def test_load_cache_rebuilds_anything_damaged(tmp_path, caplog):
    path = tmp_path / "c.pt"
    assert checkpoint.load_cache(path, "test") is None and caplog.text == ""  # missing: silently rebuilt
    torch.save({"x": torch.ones(2)}, path)
    assert checkpoint.load_cache(path, "test")["x"].sum() == 2
    for content in (b"", b"garbage", path.read_bytes()[:50]):
        path.write_bytes(content)
        with caplog.at_level(logging.WARNING, logger="ganbench"):
            assert checkpoint.load_cache(path, "test") is None
        assert not path.exists()
    torch.save({"x": torch.ones(2)}, path)
    assert checkpoint.load_cache(path, "test", check=lambda h: h["x"].numel() == 3) is None
    assert "made by another version or setting" in caplog.text and not path.exists()
    assert "Traceback" not in caplog.text


def _image_folder(root, n=24, size=16):
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels, mode="L").save(root / f"c{i % 2}" / f"{i}.png")
    return root


def test_a_damaged_folder_decode_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "cache"))
    root = _image_folder(tmp_path / "imgs")
    first = folder(str(root), resolution=16, channels=1)
    (cache,) = (tmp_path / "cache" / "folders").glob("*.pt")
    for damage in (cache.read_bytes()[:100], None):
        if damage is None:  # a readable file of the wrong layout: never trusted
            torch.save({"images": torch.zeros(3, 3, 8, 8, dtype=torch.uint8), "labels": None, "n_bad": 0}, cache)
        else:
            cache.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="ganbench"):
            again = folder(str(root), resolution=16, channels=1)
        assert "decoded-image cache" in caplog.text and "rebuilding it" in caplog.text
        assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
        assert torch.load(cache, weights_only=True)["images"].shape == first.images.shape
        caplog.clear()


def test_damaged_reference_statistics_are_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "cache"))
    real = ImageDataset("tiny-ref", torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8))
    calls = []

    def extract(images):
        calls.append(len(images))
        return images.flatten(1)[:, :4].float()

    stats, _ = image._reference(real, None, "k", extract, need_features=False)
    assert image._reference(real, None, "k", extract, need_features=False)[0].n == 20 and len(calls) == 1
    (path,) = (tmp_path / "cache" / "features").glob("ref-*.pt")
    for damage in (b"\x00" * 10, "nan"):
        if damage == "nan":
            torch.save({**stats.to_dict(), "mu": torch.full((4,), float("nan"), dtype=torch.float64)}, path)
        else:
            path.write_bytes(damage)
        with caplog.at_level(logging.WARNING, logger="ganbench"):
            again, _ = image._reference(real, None, "k", extract, need_features=False)
        assert "reference-statistics cache" in caplog.text and torch.equal(again.mu, stats.mu)
        caplog.clear()
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------------- kill -9 mid-write


@pytest.mark.parametrize("file", ["last.pt", "metrics.json"])
def test_kill9_in_the_middle_of_a_write_then_resume_recovers(tmp_cwd, file):
    over = [*OVER, "steps=6", "hydra.run.dir=outputs/run", "resume=auto"]
    killed = finish(drive(tmp_cwd, {"file": file, "at": 2, "action": "kill"}, ["train", *over]))
    assert killed.returncode == -9
    run_dir = tmp_cwd / "outputs" / "run"
    assert temps(run_dir)  # the half-written temp file of the dead writer
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 2
    proc = run_cli(["train", *over], tmp_cwd)
    assert proc.returncode == 0, proc.stderr
    record = read_metrics(run_dir)
    assert record["status"] == "completed" and record["step"] == 6
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 6
    assert temps(run_dir) == []  # removed by the next holder of the run-dir lock


def test_kill9_while_writing_the_features_cache_then_it_is_rebuilt(tmp_cwd):
    root = _image_folder(tmp_cwd / "imgs", n=128, size=16)  # the feature net needs 128 labelled images
    env = {"GANBENCH_CACHE": str(tmp_cwd / "cache")}
    args = ["features", "fit", "dataset=folder", f"dataset.root={root}", "dataset.resolution=16",
            "dataset.channels=1"]
    killed = finish(drive(tmp_cwd, {"file": "-seed0.pt", "at": 1, "action": "kill"}, args, env_extra=env))
    assert killed.returncode == -9
    features = tmp_cwd / "cache" / "features"
    assert not list(features.glob("*.pt"))  # only the dead writer's temp file, never a half cache file
    proc = run_cli(args, tmp_cwd, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    (path,) = features.glob("*-seed0.pt")
    assert torch.load(path, weights_only=True)["format"] == "ganbench-fd-classifier-1"
    path.write_bytes(path.read_bytes()[:500])  # damaged later (a full disk, a bad copy): rebuilt with a warning
    proc = run_cli(args, tmp_cwd, env_extra=env)
    assert proc.returncode == 0, proc.stderr
    log_text = proc.stdout + proc.stderr
    assert "fd_classifier feature-net cache" in log_text and "rebuilding it" in log_text
    assert "Traceback" not in log_text
    assert torch.load(path, weights_only=True)["format"] == "ganbench-fd-classifier-1"


# ---------------------------------------------------------------------------------------------------- out of memory


def test_an_oom_in_the_first_steps_is_one_line_and_the_run_dir_stays_consistent(tmp_cwd):
    over = [*tiny_overrides("mlp", dataset="grid25", steps=4, ckpt_every=1), "hydra.run.dir=outputs/run",
            "resume=auto"]
    proc = finish(drive(tmp_cwd, {"file": "(no file)", "at": 3, "action": "oom"}, ["train", *over]))
    assert_one_line_error(proc, "out of memory on cpu with batch_size=8; lower batch_size")
    run_dir = tmp_cwd / "outputs" / "run"
    record = read_metrics(run_dir)
    assert record["status"] == "failed" and record["step"] == 2 and "OutOfMemoryError" in record["error"]
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 2 and temps(run_dir) == []
    proc = run_cli(["train", *over], tmp_cwd)  # the directory is fit to resume
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(run_dir)["step"] == 4 and "resumed from" in proc.stdout


def test_a_checkpoint_from_before_the_mlp_init_option_resumes_into_the_default_only(tmp_path):
    """Checkpoints written before `model.*.init` existed lack the key: they ran PyTorch's default init, so they resume
    into `init=default` and are refused for `init=he`, with the key named."""
    overrides = tiny_overrides("mlp", steps=4, dataset="grid25")
    old = json.loads(rundir.identity(compose(overrides)))
    del old["model.generator.init"], old["model.discriminator.init"]
    rundir.check_resume_identity(json.dumps(old), rundir.identity(compose(overrides)), tmp_path / "last.pt")
    he = compose([*overrides, "model.generator.init=he"])
    with pytest.raises(GanbenchError, match=r"made with model\.generator\.init='default' but this run has .*'he'"):
        rundir.check_resume_identity(json.dumps(old), rundir.identity(he), tmp_path / "last.pt")
