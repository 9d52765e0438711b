"""`ganbench eval RUN_DIR`, `ganbench sample RUN_DIR` and `ganbench features fit`: metrics and images from a
finished (or running) run, and the fd_classifier feature net on its own.

Both rebuild the generator from ``RUN_DIR/.hydra/config.yaml`` and load a checkpoint with
:func:`ganbench.checkpoint.load` (``weights_only=True``); the EMA generator is used when the run kept one, as in
training. ``eval`` draws its fakes under ``torch.manual_seed(rundir.step_seed(seed, step))``, the seeding of the
training loop's evaluations, and merges its metrics and their protocol into ``metrics.json`` (a damaged one is refused
before anything is computed). Sizes beyond :data:`CAP` (``sample --n``, ``metrics.num_fake``) need ``--force``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.utils import make_grid

from ganbench import checkpoint, config, rundir
from ganbench.build import generate, make, resolve_device
from ganbench.errors import GanbenchError
from ganbench.metrics.classifier import feature_net
from ganbench.metrics.image import evaluate_images, to_uint8
from ganbench.metrics.settings import metrics_config

log = logging.getLogger("ganbench")

# The most images `sample --n` writes and `eval` draws (metrics.num_fake) without --force: FID's 50,000 (Heusel et al.
# 2017), so that a typo (an extra zero or three) does not fill a disk or run for hours.
CAP = 50_000

EVAL_USAGE = """usage: ganbench eval RUN_DIR [--checkpoint last|best|PATH] [metrics.KEY=VALUE ...]
                     [device=auto|cpu|cuda] [--force]

Computes the image metrics of a run's generator (default: metrics.names=[fd_classifier]; see conf/metrics/default.yaml
for the keys, e.g. metrics.num_fake=5000 metrics.names=[fd_classifier,fid,kid]) and merges them, with their
protocol, into RUN_DIR/metrics.json. metrics.num_fake above 50,000 needs --force.
"""

SAMPLE_USAGE = """usage: ganbench sample RUN_DIR --n N --out DIR [--checkpoint last|best|PATH] [--seed S]
                       [device=auto|cpu|cuda] [--force]

Writes N generated images DIR/000000.png ... and DIR/grid.png (the first min(N, 64) images, 8 per row). DIR must not
hold images of an earlier `ganbench sample`, and N above 50,000 needs --force (--force allows both).
"""


def _parse(argv: list[str], options: tuple[str, ...], usage: str) -> tuple[Path, dict, list[str]]:
    """RUN_DIR, ``--option value`` pairs (also ``--option=value``; ``--force`` alone) and ``key=value`` overrides."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage, end="")
        raise SystemExit(0 if argv else 2)
    run_dir, opts, overrides, i = None, {}, [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--"):
            name, _, value = tok[2:].partition("=")
            if name == "force" and "force" in options:
                opts[name], i = "yes", i + 1
                continue
            if name not in options:
                raise GanbenchError(f"unknown option --{name}; the options are: "
                                    f"{', '.join('--' + o for o in options)}.")
            if not value:
                if i + 1 >= len(argv):
                    raise GanbenchError(f"--{name} needs a value.")
                value, i = argv[i + 1], i + 1
            opts[name] = value
        elif "=" in tok:
            overrides.append(tok)
        elif run_dir is None:
            run_dir = Path(tok)
        else:
            raise GanbenchError(f"unexpected argument '{tok}': give one RUN_DIR, then options and overrides.")
        i += 1
    if run_dir is None:
        raise GanbenchError("give the run directory: ganbench eval|sample RUN_DIR (e.g. outputs/runs/<run>).")
    return run_dir, opts, overrides


def console_logging() -> None:
    """Log lines of the ganbench logger to stderr when nothing else set up logging (Hydra does for `train`)."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run_config(run_dir: Path) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if run_dir.exists() and not run_dir.is_dir():
        raise GanbenchError(f"{run_dir} is a file, not a run directory; give a run directory such as "
                            f"outputs/runs/<run>.")
    if not run_dir.is_dir():
        raise GanbenchError(f"run directory {run_dir} does not exist.")
    if not path.is_file():
        raise GanbenchError(f"{run_dir} is not a ganbench run directory (no .hydra/config.yaml).")
    cfg = checkpoint.read_yaml(path, "the run's config")
    if "dataset" not in cfg or "model" not in cfg:
        raise GanbenchError(f"the run's config {path} is damaged (no dataset or model); restore it from a copy of "
                            f"the run, or start a new run.")
    return cfg


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """``last`` (falls back to prev.pt), ``best`` (checkpoints/best.pt) or a file path."""
    if which == "last":
        found = rundir.find_checkpoint(run_dir)
        if found is None:
            raise GanbenchError(f"{run_dir} holds no checkpoint (looked for checkpoints/last.pt and prev.pt).")
        return found
    if which == "best":
        best = run_dir / "checkpoints" / "best.pt"
        if not best.is_file():
            raise GanbenchError(f"{run_dir} has no checkpoints/best.pt (it is written when the run evaluates image "
                                f"metrics); use --checkpoint last or a file.")
        return best
    path = Path(which)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a file" if path.exists() else "does not exist"
        raise GanbenchError(f"--checkpoint {which} is neither last, best nor a checkpoint file ({what}).")
    return path


def load_generator(cfg: DictConfig, ckpt: Path, device: torch.device):
    """(dataset, G, step, which) with G holding the EMA weights when the run kept them, in eval mode on ``device``."""
    dataset = make(cfg.dataset, "dataset")
    G = make(cfg.model.generator, "generator", out_shape=tuple(dataset.shape))
    state = checkpoint.load(ckpt)
    which = "G_ema" if state.get("G_ema") is not None else "G"
    try:
        G.load_state_dict(state[which])
    except (KeyError, RuntimeError) as e:
        raise GanbenchError(f"checkpoint {ckpt} does not fit the run's generator "
                            f"({str(e).splitlines()[0][:160]}).") from None
    return dataset, G.to(device).eval().requires_grad_(False), int(state.get("step", 0)), which


def _device(cfg: DictConfig, overrides: list[str]) -> tuple[torch.device, list[str]]:
    """The device (the run's, or a ``device=`` override) and the remaining overrides; applies ``cpu_threads``."""
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))

    name, rest = cfg.get("device", "auto"), []
    for o in overrides:
        if o.startswith("device="):
            name = o.split("=", 1)[1]
        else:
            rest.append(o)
    return resolve_device(str(name)), rest


def eval_main(argv: list[str]) -> int:
    """`ganbench eval RUN_DIR [--checkpoint last|best|PATH] [metrics.KEY=VALUE ...]`."""
    run_dir, opts, overrides = _parse(argv, ("checkpoint", "force"), EVAL_USAGE)
    console_logging()
    cfg = run_config(run_dir)
    device, overrides = _device(cfg, overrides)
    mcfg = metrics_config(cfg.get("metrics"), overrides)
    _check_before_computing(run_dir, mcfg, "force" in opts)
    path = run_dir / rundir.METRICS
    ckpt = checkpoint_path(run_dir, opts.get("checkpoint", "last"))
    dataset, G, step, which = load_generator(cfg, ckpt, device)
    if not getattr(dataset, "is_image", False):
        raise GanbenchError(f"ganbench eval computes image metrics; {dataset.name} is a 2D toy dataset, whose "
                            f"metrics (modes, hq, w1) the training run wrote to metrics.json.")
    real = None
    if mcfg.split == "test" and "split" in cfg.dataset:
        try:
            real = instantiate(cfg.dataset, split="test")
        except Exception as e:
            raise GanbenchError(f"metrics.split=test: cannot build the test split of the run's dataset "
                                f"({str(e).splitlines()[0][:200]}).") from None

    def sample_fn(n: int) -> torch.Tensor:
        return generate(G, G.sample_z(n, device=device), batch=int(mcfg.batch))

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(rundir.step_seed(int(cfg.get("seed", 0)), step))
        metrics, protocol = evaluate_images(sample_fn, dataset, mcfg, device, real=real)
    source = {"checkpoint": str(ckpt), "checkpoint_step": step, "generator": which}
    protocol = {k: {**v, **source} for k, v in protocol.items()}

    busy = None
    try:  # one writer per run directory: a training run still in it rewrites metrics.json at its next evaluation
        lock = rundir.RunLock(run_dir).acquire()
    except rundir.RunDirBusy as e:
        busy = str(e).split(";")[0]
    else:
        try:
            _merge_into_metrics_json(run_dir, cfg, step, metrics, protocol)
        finally:
            lock.release()

    print(f"{run_dir} ({ckpt.name}, step {step}, {which}):")
    _print_metrics(metrics, protocol)
    if busy:
        log.warning("%s: not written to %s (the run would overwrite it); rerun `ganbench eval` when it has ended",
                    busy, path)
    else:
        print(f"  written to {path}")
    return 0


def _check_before_computing(run_dir: Path, mcfg: DictConfig, force: bool) -> None:
    """What eval can refuse before it computes: a sample count beyond :data:`CAP` (without ``force``) and a damaged
    metrics.json (the record its metrics merge into)."""
    if int(mcfg.num_fake) > CAP and not force:
        raise GanbenchError(f"metrics.num_fake={mcfg.num_fake} is above {CAP:,} images; add --force if you mean it.")
    try:
        rundir.read_record(run_dir)
    except rundir.RecordProblem as e:
        if e.status != "missing":
            raise GanbenchError(f"{e}; ganbench eval merges its metrics into it: restore it from a copy of the run, "
                                f"or move it away (eval then writes a new one).") from None


def _print_metrics(metrics: dict, protocol: dict) -> None:
    skipped: dict[str, list[str]] = {}
    for name, p in protocol.items():
        if "skipped" in p:
            skipped.setdefault(p["skipped"], []).append(name)
            continue
        if name == "prc_classifier":  # two numbers under one name
            value = f"precision {metrics['precision_classifier']:.4g}, recall {metrics['recall_classifier']:.4g}"
        else:
            value = f"{metrics[name]:.6g}" + (f" ± {metrics[name + '_std']:.2g}" if name + "_std" in metrics else "")
        print(f"  {name:14s} {value}   ({p['real']}: {p['num_real']} real / {p['num_fake']} fake; "
              f"{p['feature_net'].split(' (')[0]}, weights {p['weights_sha256']})")
    for reason, names in skipped.items():
        print(f"  {', '.join(names):14s} skipped: {reason}")


def _merge_into_metrics_json(run_dir: Path, cfg: DictConfig, step: int, metrics: dict, protocol: dict) -> None:
    """Add ``metrics`` and ``protocol`` to the run's metrics.json (made if missing), atomically."""
    try:
        record = rundir.read_record(run_dir)
    except rundir.RecordProblem as e:
        if e.status != "missing":  # damaged since the check before computing: keep it, say so
            raise GanbenchError(f"{e}; the metrics were not written into it.") from None
        record = {}
    if not record:
        record = {"step": step, "status": "unknown", "metrics": {}, "protocol": {},
                  "config": OmegaConf.to_container(cfg, resolve=False)}
    record["metrics"] = {**(record.get("metrics") or {}), **metrics}
    record["protocol"] = {**(record.get("protocol") or {}), **protocol}
    rundir.write_record(run_dir, record)


def _save_png(image: torch.Tensor, path: Path) -> None:
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path)


def _png_name(i: int, n: int) -> str:
    return f"{i:0{max(6, len(str(n - 1)))}d}.png"


def _check_out(out: Path, n: int, force: bool) -> None:
    """--out is a directory that can be made and holds no images of an earlier `ganbench sample` (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise GanbenchError(f"--out {out} is a file, not a directory; give a new directory (or an empty one).")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise GanbenchError(f"cannot make --out {out}: {parent} is not a writable directory.")
    if out.is_dir() and not force:
        taken = [name for name in ("grid.png", _png_name(0, n)) if (out / name).exists()]
        if taken:
            raise GanbenchError(f"--out {out} holds images of an earlier `ganbench sample` ({taken[0]}); give a new "
                                f"directory, or add --force to overwrite them.")


def sample_main(argv: list[str]) -> int:
    """`ganbench sample RUN_DIR --n N --out DIR [--checkpoint last|best|PATH] [--seed S]`."""
    run_dir, opts, overrides = _parse(argv, ("n", "out", "checkpoint", "seed", "force"), SAMPLE_USAGE)
    console_logging()
    for key in ("n", "out"):
        if key not in opts:
            raise GanbenchError(f"ganbench sample needs --{key}; e.g. ganbench sample RUN_DIR --n 64 --out samples/.")
    try:
        n = int(opts["n"])
        seed = int(opts["seed"]) if "seed" in opts else None
    except ValueError:
        raise GanbenchError("--n and --seed must be integers.") from None
    if n < 1:
        raise GanbenchError(f"--n must be a positive integer, got {n}.")
    if n > CAP and "force" not in opts:
        raise GanbenchError(f"--n {n} is above {CAP:,} images; add --force if you mean it.")
    out = Path(opts["out"])
    _check_out(out, n, "force" in opts)
    cfg = run_config(run_dir)
    device, rest = _device(cfg, overrides)
    if rest:
        raise GanbenchError(f"cannot apply '{rest[0]}': ganbench sample takes only device=... as an override.")
    ckpt = checkpoint_path(run_dir, opts.get("checkpoint", "last"))
    dataset, G, step, which = load_generator(cfg, ckpt, device)
    if not getattr(dataset, "is_image", False):
        raise GanbenchError(f"ganbench sample writes images, and {dataset.name} is a 2D toy dataset; its sample "
                            f"plots are in {run_dir / 'samples'}.")
    seed = int(cfg.get("seed", 0)) if seed is None else seed
    z_gen = torch.Generator(device).manual_seed(seed)
    grid_images, written = [], 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        while written < n:
            k = min(500, n - written)
            images = to_uint8(generate(G, G.sample_z(k, device=device, generator=z_gen))).cpu()
            for image in images:
                _save_png(image, out / _png_name(written, n))
                written += 1
            grid_images += list(images[: max(0, 64 - len(grid_images))])
        grid = make_grid(torch.stack(grid_images), nrow=min(8, len(grid_images)), padding=2, pad_value=0)
        _save_png(grid, out / "grid.png")
    except OSError as e:
        reason = checkpoint.WRITE_REASONS.get(e.errno) or e.strerror or str(e)
        raise GanbenchError(f"cannot write into --out {out}: {reason}; {written} of {n} images were written.") from None
    print(f"wrote {n} images and grid.png ({len(grid_images)} images, {min(8, len(grid_images))} per row) to {out} "
          f"({ckpt.name}, step {step}, {which}, seed {seed})")
    return 0


# ---------------------------------------------------------------------------------------------------- features

FEATURES_USAGE = """usage: ganbench features fit [dataset=NAME] [dataset.KEY=VALUE ...] [metrics.classifier_seed=K]
                            [--retrain]

Trains (or loads from the cache) the fd_classifier feature net on the dataset's train split and prints its accuracy on
the held-out test split (datasets whose config has a `split` key; mnist_mini: 1,000 digits).
"""


def features_main(argv: list[str]) -> int:
    """`ganbench features fit [overrides]`."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(FEATURES_USAGE, end="")
        return 0 if argv else 2
    if argv[0] != "fit":
        raise GanbenchError(f"unknown features command '{argv[0]}'; use: ganbench features fit [dataset=NAME].")
    console_logging()
    retrain = "--retrain" in argv[1:]
    rest = [a for a in argv[1:] if a != "--retrain"]
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        raise GanbenchError(f"unknown option {unknown[0]}; see `ganbench features --help`.")
    cfg = config.compose([a for a in rest if not a.startswith("metrics.")])
    mcfg = metrics_config(cfg.get("metrics"), [a for a in rest if a.startswith("metrics.")])
    train_set = make(cfg.dataset, "dataset")
    if not getattr(train_set, "is_image", False):
        raise GanbenchError(f"fd_classifier is for image datasets; {train_set.name} is not one.")
    test_set = None
    if "split" in cfg.dataset:
        try:
            test_set = instantiate(cfg.dataset, split="test")
        except Exception as e:  # e.g. a torchvision test split that is not on disk
            log.warning("no held-out test split for %s (%s)", train_set.name, str(e).splitlines()[0][:200])
    net = feature_net(train_set, int(mcfg.classifier_seed), test=test_set, retrain=retrain)
    acc = "n/a (no held-out split)" if net.test_accuracy is None else f"{net.test_accuracy:.2%}"
    print(f"fd_classifier feature net for {train_set.name} (seed {net.seed}): test accuracy {acc}\n"
          f"  weights {net.path} (sha256 {net.sha256[:12]})")
    if net.test_accuracy is not None and not math.isnan(net.test_accuracy) and net.test_accuracy < 0.9:
        log.warning("the feature net's test accuracy is low (%.1f%%): fd_classifier numbers will be coarse",
                    100 * net.test_accuracy)
    return 0
