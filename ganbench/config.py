"""Config checks that turn bad input into one clear sentence before anything runs.

- ``prepare_argv``: composes the config for every value of the command line's overrides (each value of a sweep too)
  and turns Hydra's multi-line errors into a :class:`GanbenchError`; expands ``resume=<run dir>`` into that run's
  own overrides and output directory.
- ``validate``: types and ranges of the run knobs.
- ``identity``: the settings a checkpoint must share with the run that resumes it.

Torch-free: `ganbench train` checks its command line here before torch loads, so a bad one is refused in about a
second. torch comes in only to read the checkpoint of ``resume=`` and under torchrun.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf

from ganbench import torchrun
from ganbench.errors import GanbenchError
from ganbench.metrics.settings import check_config

CONFIG_MODULE = "ganbench.conf"
GROUPS = ("dataset", "model", "loss", "constraint", "optim", "recipe", "experiment")
POSITIVE_INTS = ("steps", "n_dis", "batch_size", "log_every", "sample_every", "eval_every", "ckpt_every",
                 "eval_samples")
# Hydra flags that take the next token as their value.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                    "--config-dir", "-cd", "--experimental-rerun"}
INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split the command line into Hydra flags and config overrides."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("-"):
            flags.append(tok)
            takes_value = tok in FLAGS_WITH_VALUE or (tok in ("--info", "-i") and i + 1 < len(argv)
                                                         and argv[i + 1] in INFO_VALUES)
            if takes_value and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(tok)
        i += 1
    return flags, overrides


def _one_line(e: Exception) -> str:
    """Hydra's multi-line messages as one sentence: unknown group option, unknown key, bad syntax."""
    text = f"{e}\n{e.__cause__ or ''}"
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        options = sorted(getattr(e, "options", None) or [])
        if m:
            group, name = m.groups()
            return f"unknown {group} '{name}'; choose one of: {', '.join(options)}."
    m = re.search(r"Could not override '([^']+)'", text)
    if m and "not in struct" in text:
        return f"unknown config key '{m.group(1)}'; see `ganbench train --cfg job` for the keys there are."
    if m:
        return f"cannot set '{m.group(1)}': {text.split(chr(10))[-1].strip() or 'bad value'}."
    m = re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        return f"unknown config key '{m.group(1)}'; see `ganbench train --cfg job` for the keys there are."
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
    if m:
        return f"'+{m.group(1)}' adds a key that exists already; write {m.group(1)}=VALUE instead."
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first.rstrip(".") + "."


def _value_sets(overrides: list[str]) -> list[list[str]]:
    """One override list per value of every sweep override (the other keys at their first value)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise GanbenchError(f"cannot parse the overrides: {_one_line(e)}") from None
    base, sweeps = [], []
    for o in parsed:
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            key = o.get_key_element()
            base.append(f"{key}={values[0]}")
            sweeps.append((len(base) - 1, key, values))
        else:
            base.append(o.input_line)
    sets = [base]
    for index, key, values in sweeps:
        for value in values[1:]:
            variant = list(base)
            variant[index] = f"{key}={value}"
            sets.append(variant)
    return sets


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with ``overrides``; errors become one-line GanbenchErrors."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return hydra_compose("train", overrides=overrides)
    except GanbenchError:
        raise
    except Exception as e:
        raise GanbenchError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def _resume_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """For ``resume=<run dir|checkpoint>``: that run's overrides first, and its directory as the output dir."""
    value = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if value in (None, "", "null", "auto"):
        return overrides, []
    from ganbench import checkpoint  # torch: loaded only when there is a checkpoint to read
    ckpt = checkpoint.find(value)
    if ckpt is None:
        raise GanbenchError(f"resume={value} holds no checkpoint (looked for checkpoints/last.pt and prev.pt).")
    run_dir = checkpoint.run_dir_of(ckpt)
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    saved = [str(o) for o in checkpoint.read_yaml(saved_file, "the run's overrides", ListConfig)] \
        if saved_file.is_file() else []
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    keep = [o for o in saved if o.split("=", 1)[0].lstrip("+~") not in given | {"resume"}
            and not o.startswith("hydra")]
    extra = []
    if not any(o.startswith("hydra.run.dir=") for o in overrides):
        extra = [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]  # keep the run's own .hydra/ as it was
    return keep + overrides, extra


def prepare_argv(argv: list[str]) -> list[str]:
    """Check the command line of `ganbench train` and return the argv to hand to Hydra."""
    flags, overrides = _split(argv)
    if any(f in ("-h", "--help", "--hydra-help", "--version") for f in flags):
        return argv
    multirun = any(f in ("-m", "--multirun") for f in flags)
    hydra_extra: list[str] = []
    if not multirun:
        overrides, hydra_extra = _resume_overrides(overrides)
    for variant in _value_sets(overrides):
        cfg = compose([o for o in variant if not o.lstrip("+~").startswith("hydra.")])
        validate(cfg)
        _check_output_dir(variant)
    if torchrun.launched() and multirun:
        raise GanbenchError("under torchrun `ganbench train` runs one job on all the processes; run a sweep (-m) "
                            "through a launcher instead (e.g. hydra/launcher=submitit_slurm).")
    if hydra_extra:  # resuming: refuse a corrupt or mismatched checkpoint before anything is written
        from ganbench import checkpoint

        ckpt = checkpoint.find(cfg.resume)
        check_resume_identity(checkpoint.load(ckpt).get("identity", ""), identity(cfg), ckpt)
    return flags + overrides + hydra_extra


def _check_output_dir(overrides: list[str]) -> None:
    """The run/sweep directory must be creatable: its nearest existing ancestor is a writable directory."""
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        value = next((o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")), None)
        path = Path(value if value else "outputs").absolute()
        while not path.exists():
            path = path.parent
        if not path.is_dir() or not os.access(path, os.W_OK):
            raise GanbenchError(f"cannot write the run output under {path} (not a writable directory); "
                                f"set hydra.run.dir to a writable place.")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _known_keys() -> set[str]:
    """The top-level keys of conf/train.yaml plus the config groups."""
    text = (importlib.resources.files(CONFIG_MODULE) / "train.yaml").read_text()
    return set(OmegaConf.create(text).keys()) - {"defaults", "hydra"} | set(GROUPS) | {"metrics"}


def validate(cfg: DictConfig) -> None:
    """Types and ranges of the run knobs; one sentence per problem."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise GanbenchError(f"{missing[0]} has no value and needs one: add {missing[0]}=... to the command line.")
    unknown = sorted(set(cfg.keys()) - _known_keys())
    if unknown:
        raise GanbenchError(f"unknown config key '{unknown[0]}'; "
                            "see `ganbench train --cfg job` for the keys there are.")
    for key in POSITIVE_INTS:
        v = cfg.get(key)
        if not _is_int(v) or v < 1:
            raise GanbenchError(f"{key} must be a positive integer, got {v!r}.")
    if cfg.g_batch_size is not None and (not _is_int(cfg.g_batch_size) or cfg.g_batch_size < 1):
        raise GanbenchError(f"g_batch_size must be null or a positive integer, got {cfg.g_batch_size!r}.")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise GanbenchError(f"seed must be a non-negative integer, got {cfg.seed!r}.")
    if not _is_number(cfg.ema_decay) or not 0 <= cfg.ema_decay < 1:
        raise GanbenchError(f"ema_decay must be a number in [0, 1) (0 turns EMA off), got {cfg.ema_decay!r}.")
    if cfg.cpu_threads is not None and (not _is_int(cfg.cpu_threads) or cfg.cpu_threads < 1):
        raise GanbenchError(f"cpu_threads must be null or a positive integer, got {cfg.cpu_threads!r}.")
    noise = cfg.instance_noise
    if not isinstance(noise, DictConfig) or set(noise.keys()) != {"std", "until"}:
        raise GanbenchError("instance_noise takes exactly two keys, std and until "
                            "(e.g. instance_noise.std=0.5 instance_noise.until=0.6).")
    if not _is_number(noise.std) or noise.std < 0:
        raise GanbenchError(f"instance_noise.std must be a number ≥ 0 (0: off), got {noise.std!r}.")
    if not _is_number(noise.until) or not 0 < noise.until <= 1:
        raise GanbenchError(f"instance_noise.until must be a number in (0, 1] (the fraction of steps by which the "
                            f"noise reaches 0), got {noise.until!r}.")
    for key in ("fast", "channels_last"):
        if not isinstance(cfg[key], bool):
            raise GanbenchError(f"{key} must be true or false, got {cfg[key]!r}.")
    if cfg.precision not in ("fp32", "bf16"):
        raise GanbenchError(f"precision must be fp32 or bf16, got {cfg.precision!r}.")
    if cfg.nan_policy != "stop":
        raise GanbenchError(f"nan_policy must be 'stop', got {cfg.nan_policy!r}.")
    if not isinstance(cfg.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg.device):
        raise GanbenchError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}.")
    if cfg.resume is not None and not isinstance(cfg.resume, str):
        raise GanbenchError(f"resume must be a path or 'auto', got {cfg.resume!r}.")
    for key in ("lr_g", "lr_d"):
        v = cfg.optim.get(key)
        if not _is_number(v) or not v > 0:
            raise GanbenchError(f"optim.{key} must be a positive number, got {v!r}.")
    if cfg.optim.get("decay") not in ("none", "linear"):
        raise GanbenchError(f"optim.decay must be 'none' or 'linear', got {cfg.optim.get('decay')!r}.")
    end = cfg.optim.get("decay_to", 0.0)
    if not _is_number(end) or not 0 <= end <= 1:
        raise GanbenchError(f"optim.decay_to must be a number in [0, 1] (the last step's fraction of the lr), "
                            f"got {end!r}.")
    warmup = cfg.optim.get("warmup", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise GanbenchError(f"optim.warmup must be a whole number of steps ≥ 0 (0: no warm-up), got {warmup!r}.")
    check_config(cfg.metrics)
    if torchrun.launched():  # the batch splits over the processes, the backend exists
        from ganbench import distributed  # torch: under torchrun only, which needs it anyway

        distributed.check_env(cfg)


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def identity(cfg: DictConfig) -> str:
    """The settings a resumed run must share with its checkpoint, as a JSON string (safe for weights_only)."""
    keys = ("dataset", "model", "loss", "constraint", "n_dis", "batch_size", "g_batch_size", "ema_decay", "seed")
    data = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in keys}
    data["optim"] = {"g": cfg.optim.g._target_, "d": cfg.optim.d._target_}
    return json.dumps(_flatten(data), sort_keys=True)


# Identity keys added after checkpoints were first written, with the value that older checkpoints ran with: a
# checkpoint without the key resumes into a run that has this value (and is refused for any other).
ADDED_KEYS = {"model.generator.init": "default", "model.discriminator.init": "default"}


def check_resume_identity(saved: str, now: str, path: Path) -> None:
    saved_d, now_d = json.loads(saved or "{}"), json.loads(now)
    for key, value in ADDED_KEYS.items():
        if saved_d and key in now_d and key not in saved_d:
            saved_d[key] = value
    for key in sorted(set(saved_d) | set(now_d)):
        if key.startswith("dataset.root"):
            continue  # the same data may move
        if saved_d.get(key) != now_d.get(key):
            raise GanbenchError(f"checkpoint {path} was made with {key}={saved_d.get(key)!r} but this run has "
                                f"{key}={now_d.get(key)!r}; resume with the same settings or start a new run.")


def hparams(cfg: DictConfig) -> dict:
    """The run's choices and main knobs, for TensorBoard's HParams view."""
    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except Exception:
        choices = {}
    out = {g: choices.get(g) or str(cfg[g].get("_target_", "")) for g in ("dataset", "model", "loss", "constraint")}
    out["optim"] = choices.get("optim") or cfg.optim.g._target_
    out.update(steps=cfg.steps, n_dis=cfg.n_dis, batch_size=cfg.batch_size, seed=cfg.seed,
               lr_g=float(cfg.optim.lr_g), lr_d=float(cfg.optim.lr_d), ema_decay=float(cfg.ema_decay),
               instance_noise=float(cfg.instance_noise.std))
    return out
