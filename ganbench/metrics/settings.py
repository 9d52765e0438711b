"""The ``metrics`` config: its metric names, defaults and checks.

Torch-free, so `ganbench train` can refuse a bad ``metrics.*`` override before torch loads
(:mod:`ganbench.config` checks it with the rest of the command line).
"""

from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig, OmegaConf

from ganbench import schema
from ganbench.errors import GanbenchError

METRICS = ("fd_classifier", "prc_classifier", "fid", "kid", "is")
RANKING = ("fd_classifier", "fid", "kid")  # lower is better: these can be metrics.primary


def default_config() -> DictConfig:
    """``conf/metrics/default.yaml`` as shipped in the package."""
    text = resources.files("ganbench.conf").joinpath("metrics/default.yaml").read_text()
    return OmegaConf.create(text)


def metrics_config(node: DictConfig | dict | None = None, overrides: list[str] | None = None) -> DictConfig:
    """``node`` (a run's ``metrics`` config, or None for the defaults) with ``metrics.KEY=VALUE`` overrides; checked.

    Keys missing from an older run's config are filled from the defaults; unknown keys are errors.
    """
    cfg = default_config()
    if node is not None:
        cfg = OmegaConf.merge(cfg, node)
    OmegaConf.set_struct(cfg, True)
    dotlist = []
    for o in overrides or []:
        if not o.startswith("metrics.") or "=" not in o:
            raise GanbenchError(f"cannot apply '{o}': only metrics.KEY=VALUE overrides are accepted here.")
        dotlist.append(o[len("metrics."):])
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except Exception as e:
        key = next((d.split("=", 1)[0] for d in dotlist if d.split("=", 1)[0].split(".")[0] not in cfg), None)
        if key:
            raise GanbenchError(f"unknown config key 'metrics.{key}'; the keys are: {', '.join(cfg)}.") from None
        raise GanbenchError(f"cannot apply the metrics overrides ({str(e).splitlines()[0]}).") from None
    check_config(cfg)
    return cfg


def check_config(mcfg: DictConfig) -> None:
    """One sentence per problem in a ``metrics`` config (call it before training starts): the knobs' types and
    ranges (:class:`ganbench.schema.Metrics`), then the names and the ranking metric."""
    schema.check_group("metrics", OmegaConf.to_container(mcfg, resolve=True))
    names = list(mcfg.names)
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise GanbenchError(f"unknown metric '{bad[0]}' in metrics.names; choose from: {', '.join(METRICS)}.")
    if names and mcfg.primary is not None and mcfg.primary not in names:
        raise GanbenchError(f"metrics.primary={mcfg.primary} is not in metrics.names={names}.")
    if mcfg.primary is not None and mcfg.primary not in RANKING:
        raise GanbenchError(f"metrics.primary={mcfg.primary} cannot rank checkpoints; choose one of "
                            f"{', '.join(RANKING)} (lower is better).")
