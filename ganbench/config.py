"""Config checks that turn bad input into one clear sentence before anything runs.

- ``prepare_argv``: composes the config for every value of the command line's overrides (each value of a sweep too)
  and turns Hydra's multi-line errors into a :class:`GanbenchError` (the run directory, ``resume=`` and the
  checkpoint's identity are :mod:`ganbench.rundir`'s, which calls this).
- ``validate``: the run knobs' types and ranges (declared once, in :mod:`ganbench.schema`) and the checks across
  knobs that no single knob's range can say (a batch larger than the dataset, a dataset root that is a file).

Torch-free: `ganbench train` checks its command line here before torch loads, so a bad one is refused in about a
second. torch comes in only under torchrun.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from ganbench import schema, study, torchrun
from ganbench.errors import GanbenchError
from ganbench.metrics.settings import check_config

CONFIG_MODULE = "ganbench.conf"
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


def _schema_error(e: Exception) -> str | None:
    """OmegaConf's refusal of a key or a value, in the schema's words (None: not one of those)."""
    cause = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    key = getattr(cause, "full_key", None)
    if not key:
        return None
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return schema.unknown_key(key)
    found = schema.lookup(key)
    if isinstance(cause, ValidationError) and found:
        return schema.refusal(key, *found, cause.value)
    return None


def _one_line(e: Exception) -> str:
    """Hydra's multi-line messages as one sentence: unknown group option, unknown key, bad value, bad syntax."""
    text = f"{e}\n{e.__cause__ or ''}"
    if isinstance(e, MissingConfigException) and "/" in (e.missing_cfg_file or ""):
        group, _, name = e.missing_cfg_file.rpartition("/")
        return f"unknown {group} '{name}'; choose one of: {', '.join(sorted(e.options or []))}."
    from_schema = _schema_error(e)
    if from_schema:
        return from_schema
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", text)
    if m:
        return f"'+{m.group(1)}' adds a key that exists already; write {m.group(1)}=VALUE instead."
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return f"cannot set '{m.group(1)}': {text.split(chr(10))[-1].strip() or 'bad value'}."
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first.rstrip(".") + "."


def _value_sets(overrides: list[str]) -> list[list[str]]:
    """One override list per value of every sweep override (the other keys at their first value)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise GanbenchError(f"cannot parse the overrides: {_one_line(e)}") from None
    _check_switches(parsed)
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


def _check_switches(parsed: list) -> None:
    """true or false for a boolean knob of the top level, where OmegaConf would take any integer for a truth value;
    and ``+group.key=...`` adds only a knob the group declares (a typo would reach the option's class)."""
    for o in parsed:
        if o.is_add() and not schema.declared(o.key_or_group):
            raise GanbenchError(schema.unknown_key(o.key_or_group))
        found = schema.lookup(o.key_or_group)
        if found and schema.is_switch(*found):
            for value in (o.sweep_iterator() if o.is_sweep_override() else [o.value()]):
                if not isinstance(value, bool):
                    raise GanbenchError(schema.refusal(o.key_or_group, *found, value))


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def pin_optimizer(overrides: list[str]) -> list[str]:
    """An optimizer chosen on the command line (``optim=adam``) beats a recipe's: ``recipe=paper`` switches a pair
    to RMSprop by the ``_target_`` of ``optim.g`` / ``optim.d``, later in the defaults list than the optim group, so
    the choice alone would lose. Where it would, the chosen file's classes are added as explicit overrides (which
    also land in the run's .hydra/overrides.yaml); the recipe's learning rates, betas and n_dis stay."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return overrides  # compose says what is wrong with them
    chosen = [o for o in parsed if o.key_or_group == "optim" and not o.is_sweep_override() and not o.is_delete()]
    if not chosen or any(o.key_or_group in ("optim.g._target_", "optim.d._target_") for o in parsed):
        return overrides
    name = chosen[-1].value()
    path = resources.files("ganbench.conf") / "optim" / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        return overrides
    want = OmegaConf.create(path.read_text())
    GlobalHydra.instance().clear()
    try:
        got = _compose([o for o in overrides if not o.lstrip("+~").startswith("hydra.")]).optim
    except Exception:
        return overrides
    finally:
        GlobalHydra.instance().clear()
    return overrides + [f"optim.{net}._target_={want[net]._target_}" for net in ("g", "d")
                        if got[net]._target_ != want[net]._target_]


def compose(overrides: list[str]) -> DictConfig:
    """Compose conf/train.yaml with ``overrides``; errors become one-line GanbenchErrors."""
    overrides = pin_optimizer(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return study.apply(hydra_compose("train", overrides=overrides), overrides=overrides)  # a trial: its draws
    except GanbenchError:
        raise
    except Exception as e:
        raise GanbenchError(_one_line(e)) from None
    finally:
        GlobalHydra.instance().clear()


def prepare_argv(argv: list[str]) -> list[str]:
    """Check the command line of `ganbench train` and return the argv to hand to Hydra."""
    flags, overrides = _split(argv)
    if any(f in ("-h", "--help", "--hydra-help", "--version") for f in flags):
        return argv
    overrides = pin_optimizer(overrides)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    for variant in _value_sets(overrides):
        cfg = compose([o for o in variant if not o.lstrip("+~").startswith("hydra.")])
        validate(cfg)
        check_paths(cfg)
    if torchrun.launched() and multirun:
        raise GanbenchError("under torchrun `ganbench train` runs one job on all the processes; run a sweep (-m) "
                            "through a launcher instead (e.g. hydra/launcher=submitit_slurm).")
    return flags + overrides


def validate(cfg: DictConfig) -> None:
    """The run knobs' types and ranges, then the checks across knobs; one sentence for the first problem."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise GanbenchError(f"{missing[0]} has no value and needs one: add {missing[0]}=... to the command line.")
    schema.check(cfg)
    _check_batch(cfg)
    _check_memory(cfg)
    check_config(cfg.metrics)
    if torchrun.launched():  # the batch splits over the processes, the backend exists
        from ganbench import distributed  # torch: under torchrun only, which needs it anyway

        distributed.check_env(cfg)


def check_paths(cfg: DictConfig) -> None:
    """The folders a run reads before it loads anything: the dataset's root and the cache."""
    node = cfg.dataset
    cache_root()
    root = node.get("root")
    if isinstance(root, str):
        path = Path(root).expanduser()
        if path.exists() and not path.is_dir():
            raise GanbenchError(f"dataset.root={root} is a file, not a folder: set dataset.root to a folder.")
        if not path.exists() and "download" not in node:
            raise GanbenchError(f"dataset.root={root} does not exist: set dataset.root to a folder of images.")
        if not path.exists() and not node.download:
            raise GanbenchError(f"dataset.root={root} does not exist and dataset.download=false: set "
                                f"dataset.download=true (needs internet), or unpack an image-folder copy and use "
                                f"dataset=folder dataset.root=PATH.")


def _check_batch(cfg: DictConfig) -> None:
    """A batch fits in the dataset, where its size is known before it loads."""
    node = cfg.dataset
    size = schema.knobs_of("dataset", node).sizes.get(node.get("split"))
    if node.get("max_images") is not None:
        size = node.max_images
    if size is not None and cfg.batch_size > size:
        raise GanbenchError(f"batch_size={cfg.batch_size} is larger than the dataset ({size} images); "
                            f"lower batch_size.")


def machine_memory() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_memory(cfg: DictConfig) -> None:
    """The sizes fit in this machine's memory, by a lower bound of what training holds at once: one batch of real
    and fake samples with their gradients, and for MLP nets (``hidden`` × ``depth``) the float32 weights, gradients
    and two Adam moments plus one batch's activations and their gradients. (A GPU has less memory than its host.)"""
    data = cfg.dataset
    if "resolution" in data or "root" in data:  # an image dataset; the 2D toys have neither
        channels = data.get("channels") or schema.knobs_of("dataset", data).image_channels
        numel = channels * data.get("resolution", 32) ** 2
    else:
        numel = 2
    batch = max(cfg.batch_size, cfg.g_batch_size or 0)
    need = 3 * batch * numel * 4
    for net in ("generator", "discriminator"):
        node = cfg.model.get(net) or {}
        hidden, depth = node.get("hidden"), node.get("depth")
        if isinstance(hidden, int) and isinstance(depth, int):
            need += 16 * (depth - 1) * hidden**2 + 8 * batch * hidden * depth
    have = machine_memory()
    if need > have:
        raise GanbenchError(f"batch_size={cfg.batch_size} (samples of {numel:,} numbers) with these model widths needs "
                            f"at least {need / 2**30:,.0f} GiB of memory and this machine has {have / 2**30:,.0f} GiB; "
                            f"lower batch_size or the model's hidden/depth.")


def cache_root() -> Path:
    """``$GANBENCH_CACHE`` (default ``~/.cache/ganbench``): decoded datasets, feature nets, reference statistics."""
    value = os.environ.get("GANBENCH_CACHE", "~/.cache/ganbench")
    if not value.strip():
        raise GanbenchError("GANBENCH_CACHE is set but empty: unset it (the cache is then ~/.cache/ganbench) or set "
                            "it to a directory.")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise GanbenchError(f"GANBENCH_CACHE={value} is a file, not a directory: set it to a directory.")
    return path


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
