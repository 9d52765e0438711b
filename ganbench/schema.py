"""The run's knobs: their types and allowed ranges, declared once. Torch-free.

- :class:`Train` types conf/train.yaml's top-level knobs. It is registered in Hydra's ConfigStore as
  ``train_schema`` and comes first in train.yaml's defaults list, so Hydra types every value as it composes
  (``steps=abc`` fails there) and refuses keys the schema does not have. The values, and the comments that explain
  them to users, stay in the YAML files.
- Group options (``conf/<group>/*.yaml``) differ in their keys and carry a ``_target_``, so their knobs are declared
  per group, by name (:data:`GROUP_KNOBS`): an option that reuses a knob name is checked with no edit here; an
  option with a new knob adds a line here only if the knob has bounds. A ``_target_`` with narrower rules names its
  own subclass (:data:`BY_TARGET`).
- OmegaConf has types but no ranges: each field's ``metadata`` holds its :class:`Bounds`; :func:`check` applies
  types and bounds to a composed config and :func:`describe` words what a knob allows, for every message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from ganbench.errors import GanbenchError

# Sizes above these cannot fit in any machine's memory this project runs on (a batch of 2^20 32×32 RGB images is
# 12 GB as float32 before a single activation) or make a metric intractable (exact W1 on N points is O(N³)).
MAX_BATCH = 2**20
MAX_WIDTH = 2**14   # MLP hidden units, z_dim
MAX_CHANNELS = 2**12
MAX_DEPTH = 256
MAX_RESOLUTION = 1024
PATH = r".*\S.*"  # a path: not empty, not blanks (an empty root would be the current directory)
MAX_SEED = 2**32 - 1  # seeds of 32 bits: torch seeds seed·1,000,003 + step, which stays within 64 bits


@dataclass(frozen=True)
class Bounds:
    """What a knob allows beyond its type. ``what`` replaces the generated wording; ``note`` is appended to it."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    pattern: str | None = None
    length: int | None = None   # lists: exactly this many items, each within the bounds above
    what: str | None = None
    note: str | None = None


def knob(**bounds) -> Any:
    """A schema field with no default (the YAML holds the value) and its bounds."""
    return field(default=MISSING, metadata={"bounds": Bounds(**bounds)})


# ---------------------------------------------------------------------------------------------------- top level


@dataclass
class InstanceNoise:
    std: float = knob(ge=0, note="0: off")
    until: float = knob(gt=0, le=1, note="the fraction of steps by which the noise reaches 0")


@dataclass
class CriticSchedule:
    burst: int = knob(ge=0, le=10000, note="0: off")
    first: int = knob(ge=0)
    every: int = knob(ge=0, note="0: no bursts after the first ones")


@dataclass
class Train:
    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    constraint: Any = MISSING
    optim: Any = MISSING
    metrics: Any = MISSING
    steps: int = knob(ge=1)
    n_dis: int = knob(ge=1, le=1000)
    critic_schedule: CriticSchedule = field(default_factory=CriticSchedule)
    batch_size: int = knob(ge=1, le=MAX_BATCH)
    g_batch_size: int | None = knob(ge=1, le=MAX_BATCH)
    seed: int = knob(ge=0, le=MAX_SEED)
    device: str = knob(pattern=r"auto|cpu|cuda(:\d+)?|mps", what="auto, cpu, cuda or cuda:N")
    cpu_threads: int | None = knob(ge=1, le=4096)
    fast: bool = knob()
    precision: str = knob(choices=("fp32", "bf16"))
    channels_last: bool = knob()
    instance_noise: InstanceNoise = field(default_factory=InstanceNoise)
    ema_decay: float = knob(ge=0, lt=1, note="0 turns EMA off")
    log_every: int = knob(ge=1)
    sample_every: int = knob(ge=1)
    eval_every: int = knob(ge=1)
    ckpt_every: int = knob(ge=1)
    study: Any = None   # study=random fills it (ganbench/study.py checks it)
    resume: str | None = knob(what="a run directory, a checkpoint file or 'auto'")
    nan_policy: str = knob(choices=("stop",))
    progress: bool = knob()
    eval_samples: int = knob(ge=1, le=20000, note="exact W1 is cubic in it; PacGAN's protocol uses 2,500")


# ---------------------------------------------------------------------------------------------------- groups


@dataclass
class Dataset:
    root: str = knob(pattern=PATH, what="a path")
    download: bool = knob()
    split: str = knob(choices=("train", "test"))
    resolution: int = knob(ge=1, le=MAX_RESOLUTION)
    channels: int = knob(choices=(1, 3), note="1: grayscale, 3: RGB")
    max_images: int | None = knob(ge=1, note="null: all")
    spacing: float = knob(gt=0)
    radius: float = knob(gt=0)
    std: float = knob(gt=0)
    # The number of samples of each split, where the dataset's size is known before it loads (batch_size ≤ it), and
    # the channels of its images where no knob sets them.
    sizes: typing.ClassVar[dict] = {}
    image_channels: typing.ClassVar[int] = 3


@dataclass
class MNIST(Dataset):
    resolution: int = knob(choices=(28, 32), note="32 pads the 28-pixel digits")
    sizes: typing.ClassVar[dict] = {"train": 60000, "test": 10000}
    image_channels: typing.ClassVar[int] = 1


@dataclass
class MNISTMini(MNIST):
    sizes: typing.ClassVar[dict] = {"train": 10000, "test": 1000}


@dataclass
class CIFAR10(Dataset):
    sizes: typing.ClassVar[dict] = {"train": 50000, "test": 10000}


@dataclass
class Net:
    z_dim: int = knob(ge=1, le=MAX_WIDTH)
    ch: int = knob(ge=1, le=MAX_CHANNELS)
    hidden: int = knob(ge=1, le=MAX_WIDTH)
    depth: int = knob(ge=1, le=MAX_DEPTH)
    init: str = knob(choices=("default", "he"))
    layout: str = knob(choices=("table3", "chainer"))
    pool: str = knob(choices=("sum", "mean"))
    bias: bool = knob()
    batchnorm: bool = knob()


@dataclass
class Model:
    z_dim: int = knob(ge=1, le=MAX_WIDTH)
    generator: Net = field(default_factory=Net)
    discriminator: Net = field(default_factory=Net)


@dataclass
class Loss:
    saturating: bool = knob()
    weight: float = knob(ge=0)
    one_sided: bool = knob()
    k: float = knob(ge=0)
    p: float = knob(gt=0)
    at: str = knob(choices=("interpolates", "real_fake"))
    lam: float = knob(gt=0)
    norm: str = knob(choices=("l2", "l1"))
    pairs: str = knob(choices=("index", "all"))


@dataclass
class Constraint:
    c: float = knob(gt=0)
    n_power_iterations: int = knob(ge=1, le=100)
    weight: float = knob(ge=0)
    one_sided: bool = knob()
    gamma: float = knob(ge=0)
    K: float = knob(gt=0)
    eps: float = knob(gt=0)


@dataclass
class Optimizer:
    """An optimizer node's arguments (lr and betas interpolate optim.lr_g/lr_d and optim.betas; the others are
    torch's, added with +optim.g.KEY=...)."""

    lr: float = knob(gt=0, le=1, what="a positive number ≤ 1")
    betas: list[float] = knob(ge=0, lt=1, length=2, what="two numbers in [0, 1), e.g. [0.0, 0.9]")
    weight_decay: float = knob(ge=0)
    eps: float = knob(gt=0)
    momentum: float = knob(ge=0, lt=1)
    alpha: float = knob(ge=0, lt=1)
    amsgrad: bool = knob()
    centered: bool = knob()


@dataclass
class Optim:
    lr_g: float = knob(gt=0, le=1, what="a positive number ≤ 1")
    lr_d: float = knob(gt=0, le=1, what="a positive number ≤ 1")
    betas: list[float] = knob(ge=0, lt=1, length=2, what="two numbers in [0, 1), e.g. [0.0, 0.9]")
    decay: str = knob(choices=("none", "linear"))
    decay_to: float = knob(ge=0, le=1, note="the last step's fraction of the lr")
    warmup: int = knob(ge=0, what="a whole number of steps ≥ 0", note="0: no warm-up")
    g: Optimizer = field(default_factory=lambda: Optimizer())  # G's and D's optimizer nodes
    d: Optimizer = field(default_factory=lambda: Optimizer())


@dataclass
class Metrics:
    names: list[str] = knob(what="a list such as [fd_classifier, fid]")
    primary: str | None = knob()
    num_fake: int = knob(ge=2, le=10**7)
    num_real: int | None = knob(ge=2, note="null: all of the split")
    split: str = knob(choices=("train", "test"))
    batch: int = knob(ge=2, le=MAX_BATCH)
    classifier_seed: int = knob(ge=0, le=MAX_SEED)
    inception_weights: str | None = knob(pattern=PATH, what="a path")
    inception_download: bool = knob()


# Each group's knobs, and the ``_target_`` values with narrower rules (an unlisted target gets its group's class).
GROUP_KNOBS = {"dataset": Dataset, "model": Model, "loss": Loss, "constraint": Constraint, "optim": Optim,
               "metrics": Metrics}
BY_TARGET = {"ganbench.data.mnist": MNIST, "ganbench.data.mnist_mini": MNISTMini, "ganbench.data.cifar10": CIFAR10}


def register() -> None:
    """Store :class:`Train` in Hydra's ConfigStore as ``train_schema`` (conf/train.yaml's first default)."""
    ConfigStore.instance().store(name="train_schema", node=Train)


register()


# ---------------------------------------------------------------------------------------------------- checks


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _optional(hint) -> bool:
    return type(None) in typing.get_args(hint)


def _base(hint):
    """int for int | None, list for list[float], the dataclass for a nested node."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint


def _interval(b: Bounds) -> str:
    lo = f"[{_num(b.ge)}" if b.ge is not None else f"({_num(b.gt)}" if b.gt is not None else None
    hi = f"{_num(b.le)}]" if b.le is not None else f"{_num(b.lt)})" if b.lt is not None else None
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return f"≥ {lo[1:]}" if lo[0] == "[" else f"> {lo[1:]}"
    if hi:
        return f"≤ {hi[:-1]}" if hi[-1] == "]" else f"< {hi[:-1]}"
    return ""


def _num(x) -> str:
    return f"{x:,}" if isinstance(x, int) and abs(x) >= 10000 else str(x)


def _upper(b: Bounds) -> str:
    return f" ≤ {_num(b.le)}" if b.le is not None else f" < {_num(b.lt)}" if b.lt is not None else ""


def _keys(cls) -> str:
    """'exactly two keys, std and until'."""
    names = [x.name for x in dataclasses.fields(cls)]
    count = {1: "one key", 2: "two keys", 3: "three keys"}.get(len(names), f"{len(names)} keys")
    return f"exactly {count}, {', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else f"one key, {names[0]}"


def describe_field(f: dataclasses.Field, hint) -> str:
    """What a knob allows, as the end of "KEY must be ...": 'a positive integer', "'none' or 'linear'", ..."""
    b: Bounds = f.metadata.get("bounds", Bounds())
    base = _base(hint)
    if dataclasses.is_dataclass(base):
        return f"a node of {_keys(base)}"
    if b.what:
        text = b.what
    elif b.choices:
        shown = [repr(c) if isinstance(c, str) else str(c) for c in b.choices]
        text = shown[0] if len(shown) == 1 else " or ".join(shown) if len(shown) == 2 else \
            f"one of {', '.join(shown)}"
    elif base is bool:
        text = "true or false"
    elif base is int:
        if b.ge == 1 or b.gt == 0:
            text = "a positive integer" + _upper(b)
        elif b.ge == 0:
            text = "a non-negative integer" + _upper(b)
        else:
            text = f"an integer {_interval(b)}".rstrip()
    elif base is float:
        positive = b.gt == 0 and b.le is None and b.lt is None
        text = "a positive number" if positive else f"a number {_interval(b)}".rstrip()
    elif base is str:
        text = "a string"
    else:
        text = "a list"
    if _optional(hint):
        text = f"null or {text}"
    return f"{text} ({b.note})" if b.note else text


def _plain(value, hint) -> bool:
    """No conversion needed: OmegaConf would read 3 or 'yes' as true and '16' as 16, but a group option's class gets
    the value as it is."""
    base = _base(hint)
    if base is list:
        item = (typing.get_args(hint) or (Any,))[0]
        return not isinstance(value, list) or item is str or not any(isinstance(v, str) for v in value)
    if base is bool:
        return isinstance(value, bool) or value is None
    return base is str or not isinstance(value, str)


def _within(value, b: Bounds) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return not ((b.ge is not None and not value >= b.ge) or (b.gt is not None and not value > b.gt)
                or (b.le is not None and not value <= b.le) or (b.lt is not None and not value < b.lt))


def _allowed(value, f: dataclasses.Field, hint) -> bool:
    b: Bounds = f.metadata.get("bounds", Bounds())
    if value is None:
        return _optional(hint)
    if b.choices is not None and value not in b.choices:
        return False
    if b.pattern is not None and not (isinstance(value, str) and re.fullmatch(b.pattern, value)):
        return False
    if isinstance(value, list):
        if b.length is not None and len(value) != b.length:
            return False
        return all(_within(v, b) for v in value if isinstance(v, (int, float)))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _within(value, b)
    return True


def refusal(path: str, cls, key: str, value) -> str:
    """The one sentence for a bad value of ``key`` (a field of schema class ``cls``) at ``path``."""
    return f"{path} must be {describe_field(_fields(cls)[key], _hints(cls)[key])}, got {value!r}."


def declared(path: str) -> bool:
    """Whether a dotted key of a group node (``loss.lam``, ``model.discriminator.layout``) is a knob the group's schema
    declares; True for any other key (the top level has its own check)."""
    group, _, rest = path.partition(".")
    cls = GROUP_KNOBS.get(group)
    if cls is None or not rest:
        return True
    for part in rest.split("."):
        if cls is Any:
            return True
        if not dataclasses.is_dataclass(cls) or part not in _fields(cls):
            return False
        cls = _base(_hints(cls)[part])
    return True


def is_switch(cls, key: str) -> bool:
    """True for a boolean knob."""
    return _base(_hints(cls)[key]) is bool


def unknown_key(path: str) -> str:
    """The one sentence for a key that is not in the config (``stepz``, ``instance_noise.sigma``)."""
    parent = path.rpartition(".")[0]
    found = lookup(parent) if parent else None
    base = _base(_hints(found[0])[found[1]]) if found else None
    if dataclasses.is_dataclass(base):
        return f"unknown config key '{path}'; {parent} takes {_keys(base)}."
    return f"unknown config key '{path}'; see `ganbench train --cfg job` for the keys there are."


def lookup(path: str):
    """(schema class, field name) of a dotted key of :class:`Train` (``steps``, ``instance_noise.std``), or None."""
    cls, *parents = Train, *path.split(".")[:-1]
    for part in parents:
        base = _base(_hints(cls)[part]) if part in _fields(cls) else None
        if not dataclasses.is_dataclass(base):
            return None
        cls = base
    key = path.split(".")[-1]
    return (cls, key) if key in _fields(cls) else None


def _check_node(node: dict, cls, prefix: str, closed: bool) -> None:
    """Types and bounds of the knobs of ``node`` that ``cls`` declares. A ``closed`` node (the top level and its
    nested nodes) has no other keys; a group option may have knobs of its own (no bounds declared: finite if float)."""
    typed = OmegaConf.structured(cls)
    fields, hints = _fields(cls), _hints(cls)
    for key, value in node.items():
        if key not in fields:
            if closed:
                raise GanbenchError(unknown_key(prefix + key))
            if isinstance(value, float) and not math.isfinite(value):
                raise GanbenchError(f"{prefix}{key} must be a finite number, got {value!r}.")
            continue
        base = _base(hints[key])
        if dataclasses.is_dataclass(base):
            if isinstance(value, dict):
                _check_node(value, base, f"{prefix}{key}.", closed)
            elif closed:
                raise GanbenchError(refusal(prefix + key, cls, key, value))
            continue
        if not _plain(value, hints[key]):
            raise GanbenchError(refusal(prefix + key, cls, key, value))
        try:
            typed[key] = value
            value = OmegaConf.to_container(typed[key]) if OmegaConf.is_config(typed[key]) else typed[key]
        except ValidationError:
            raise GanbenchError(refusal(prefix + key, cls, key, value)) from None
        if not _allowed(value, fields[key], hints[key]):
            raise GanbenchError(refusal(prefix + key, cls, key, value))


def knobs_of(group: str, node: dict):
    """The schema class of a group node: its ``_target_``'s own, else the group's."""
    return BY_TARGET.get(node.get("_target_", ""), GROUP_KNOBS[group])


def check_group(group: str, node: dict) -> None:
    """Types and bounds of a group node's declared knobs (``node`` a plain dict); one sentence for the first bad one."""
    _check_node(node, knobs_of(group, node), f"{group}.", closed=False)


def check(cfg: DictConfig) -> None:
    """Types, bounds and keys of a composed config; one sentence for the first bad one.

    Hydra has typed the top level as it composed; this adds the bounds, the keys that ``+key=value`` added, and the
    group options' knobs."""
    data = OmegaConf.to_container(cfg, resolve=True)
    _check_node({k: v for k, v in data.items() if k not in GROUP_KNOBS}, Train, "", closed=True)
    for group in GROUP_KNOBS:
        if isinstance(data.get(group), dict):
            check_group(group, data[group])
