"""The losses and constraints conf/ offers, found by reading it: one YAML per method names its class.

A method is one class and one file ``conf/loss/NAME.yaml`` or ``conf/constraint/NAME.yaml`` whose ``_target_`` is
that class. Everything that needs the set of methods (tests, the study sweeps' ``glob(*)``, a run's first lines)
reads it from there, so adding a method touches nothing else. Torch-free: the YAML is read as text by OmegaConf.
"""

from __future__ import annotations

from importlib import resources

from omegaconf import OmegaConf

GROUPS = ("loss", "constraint")


def options(group: str) -> dict[str, str]:
    """``{name: _target_}`` for every YAML of ``group`` (``"loss"`` or ``"constraint"``), sorted by name."""
    folder = resources.files("ganbench.conf") / group
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    return {f.name[: -len(".yaml")]: OmegaConf.create(f.read_text())["_target_"] for f in files}


def names(group: str) -> list[str]:
    """The option names of ``group``, sorted: what ``loss=NAME`` / ``constraint=NAME`` accepts."""
    return list(options(group))


def _target(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def name_of(obj: object, group: str) -> str:
    """The option name whose YAML builds ``obj``'s class (the first by name if several do); else the class name."""
    target = _target(type(obj))
    return next((name for name, t in options(group).items() if t == target), type(obj).__name__)


def base_name(cls: type, group: str, keep=lambda c: True) -> str | None:
    """The option name of the nearest base class of ``cls`` that has a YAML and passes ``keep``, or None."""
    by_target = {t: name for name, t in reversed(options(group).items())}
    return next((by_target[_target(c)] for c in cls.__mro__[1:] if _target(c) in by_target and keep(c)), None)


def knobs(group: str) -> set[str]:
    """Every key some option of ``group`` declares (``lam``, ``weight``, ``gamma``, …), ``_target_`` aside."""
    folder = resources.files("ganbench.conf") / group
    return {key for f in folder.iterdir() if f.name.endswith(".yaml")
            for key in OmegaConf.create(f.read_text()) if key != "_target_"}
