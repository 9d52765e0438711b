"""Random-search studies: every loss × constraint cell gets the same K hyperparameter draws, and the report compares
the cells by the best metric a budget of k trials buys (Lucic et al. 2018, "Are GANs Created Equal?", arXiv
1711.10337; Kurach et al. 2019, arXiv 1807.04720).

The search space is declared in ``conf/study/random.yaml``: the learning rate (one α for G and D) log-uniform on
[1e-5, 1e-2] and the penalty weight λ log-uniform on [0.1, 100] are Lucic et al.'s wide ranges (compare_gan's
``params.py``); β2 ∈ {0.9, 0.999} and n_dis ∈ {1, 5} are the values of Kurach et al.'s settings, with n_dis 2 added
between them; β1 ∈ {0, 0.5} holds both papers' 0.5 and the 0 of SN-GAN and of ganbench's shared setting.

**The draws.** Trial t of a study with seed s draws one uniform number per knob, in the space's order, from numpy's
``Generator`` seeded by (s, t): the values are a pure function of (s, t), never of the cell, of torch's RNG or of
the order the launcher runs the jobs in. Every cell therefore gets the same draws where a knob is shared (common
random numbers), and the one λ draw of a trial sets every weight key the cell has (``constraint.weight``, r1's
``constraint.gamma``, ``loss.weight``, GAN-QP's ``loss.lam``); a cell without one (sn, gn, none) skips it.
Continuous values are rounded to 3 significant digits, so the command that reproduces a trial is short and exact.

**Why the basic sweeper over a trial index.** The study is a plain Hydra sweep: ``study=random`` sets
``hydra.sweeper.params: {study.trial: range(K)}``, so the basic sweeper crosses the trial index with the command
line's loss × constraint values, and each job's ``overrides.yaml`` names its trial. The launchers (basic, joblib,
submitit), ``resume=auto`` (a requeued job composes the same overrides, so draws the same values) and `ganbench
report` see ordinary jobs. Hydra's Optuna sweeper would add a dependency and a sampler state that lives in the
sweeping process, while the draws here need nothing but (seed, trial). :func:`apply` sets the draws wherever a
config is composed (``config.compose``: the command-line check and a resume's identity check see them) and where the
job starts (the task, on Hydra's own config), and there writes ``command.txt``: the plain `ganbench train` command,
with the drawn values spelled out, that reruns the trial alone (bit for bit on the CPU). The study group comes before
the experiment preset in the defaults list, so the trial index is the sweep's outer loop: a study stopped early has
the same number of trials in every cell, give or take one.

**The analysis** (:func:`analyse`, called by `ganbench report` when the sweep is a study): per cell, the best-of-k
curve, i.e. the median and the 95 % interval of the best metric among k trials drawn with replacement from the
cell's K, for k = 1 … K. The quantiles are those of the exact bootstrap distribution (the limit of infinitely many
resamples), P(best of k is among the i best of K) = 1 − (1 − i/K)^k, so they are deterministic; k = 1 gives the
median of the trials, k = K the best trial. A trial that failed or diverged counts as a draw with the worst possible
value. Cells are ranked at k = K; a cell whose interval overlaps a better cell's is tied with it.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from ganbench import methods
from ganbench.errors import GanbenchError

# "Trains": the final metric on the good side of this threshold. W1 on the 2D toys: below half of grid25's mode
# spacing (2); hq: half the samples within 3σ of a mode; fd_classifier: an untrained G is about 2,000 on mnist_mini,
# a trained one 20-25; FID: the usual line between a GAN that learnt the data and one that did not.
TRAINS = {"w1": 1.0, "hq": 0.5, "fd_classifier": 100.0, "fid": 100.0}
SIGNIFICANT = 3  # digits kept of a continuous draw
BEST_SEEDS = 5  # seeds suggested for each cell's best trial


# ---------------------------------------------------------------- the draws


def _knobs(space) -> dict[str, dict]:
    """The space as plain dicts, checked: every knob has ``set`` and exactly one of log_uniform / choice."""
    space = OmegaConf.to_container(space, resolve=True) if OmegaConf.is_config(space) else space
    if not isinstance(space, dict) or not space:
        raise GanbenchError("study.space must map each knob to {set: [keys], log_uniform: [low, high] | choice: "
                            "[values]}.")
    for name, spec in space.items():
        kinds = [k for k in ("log_uniform", "choice") if k in (spec or {})]
        if not isinstance(spec, dict) or len(kinds) != 1 or not isinstance(spec.get("set"), list):
            raise GanbenchError(f"study.space.{name} needs `set: [config keys]` and one of `log_uniform: [low, "
                                f"high]` or `choice: [values]`.")
        values = spec[kinds[0]]
        if not isinstance(values, list) or not values:
            raise GanbenchError(f"study.space.{name}.{kinds[0]} must be a non-empty list.")
        if kinds[0] == "log_uniform" and not (len(values) == 2 and all(isinstance(v, (int, float)) and v > 0
                                                                         for v in values) and values[0] <= values[1]):
            raise GanbenchError(f"study.space.{name}.log_uniform must be [low, high] with 0 < low ≤ high, "
                                f"got {values}.")
    return space


def draws(seed: int, trial: int, space) -> dict[str, float | int | str]:
    """Knob → value for trial ``trial`` of the study seeded ``seed``: one uniform u per knob, in the space's order,
    from numpy's Generator seeded by (seed, trial); log_uniform maps u to low·(high/low)^u (3 significant digits),
    choice to the ⌊u·n⌋-th value."""
    if not (isinstance(seed, int) and seed >= 0 and isinstance(trial, int) and trial >= 0):
        raise GanbenchError(f"study.seed and study.trial must be integers ≥ 0, got {seed!r} and {trial!r}.")
    rng = np.random.default_rng([seed, trial])
    out = {}
    for name, spec in _knobs(space).items():
        u = float(rng.random())
        if "log_uniform" in spec:
            low, high = (float(v) for v in spec["log_uniform"])
            out[name] = float(f"{low * (high / low) ** u:.{SIGNIFICANT}g}")
        else:
            values = spec["choice"]
            out[name] = values[min(int(u * len(values)), len(values) - 1)]
    return out


_ABSENT = object()


def _lookup(cfg, key: str):
    """The value at a dotted key (a list element by its index: ``optim.betas.0``), or _ABSENT."""
    node = cfg
    for part in key.split("."):
        if isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            return _ABSENT
    return node


def _set(cfg: DictConfig, key: str, value) -> None:
    parent, _, last = key.rpartition(".")
    node = _lookup(cfg, parent) if parent else cfg
    node[int(last) if isinstance(node, ListConfig) else last] = value


def assignments(cfg: DictConfig) -> dict[str, object]:
    """Config key → drawn value, for the keys of the space that this cell's config has."""
    study = cfg.get("study")
    values = draws(study.seed, study.trial, study.space)
    out = {}
    for name, spec in _knobs(study.space).items():
        for key in spec["set"]:
            if _lookup(cfg, key) is not _ABSENT:
                out[key] = values[name]
    return out


def is_study(cfg) -> bool:
    return OmegaConf.is_config(cfg) and isinstance(cfg.get("study"), DictConfig) and "trial" in cfg.study


def _known(cfg: DictConfig, key: str) -> bool:
    """A key the space may set: one this config has, or a loss or constraint knob some option of that group
    declares (a cell without it skips it, as sn has no penalty weight); anything else is a typo."""
    group, _, rest = key.partition(".")
    if group in methods.GROUPS and rest:
        return rest.split(".", 1)[0] in methods.knobs(group) or _lookup(cfg, key) is not _ABSENT
    return _lookup(cfg, key) is not _ABSENT


def _override_keys(cfg: DictConfig, overrides: list[str]) -> set[str]:
    """The keys the command line sets a value or list at (a group choice such as ``loss=hinge`` is not one)."""
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o and not _is_study_override(o)}
    return {k for k in keys if not isinstance(_lookup(cfg, k), DictConfig)}


def check(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """A study's settings, in one sentence each (composition has checked the rest): the trial count, the space's
    shape, every key it sets exists, and none of them is also set on the command line (the draw would win)."""
    if not is_study(cfg):
        return
    trials = cfg.study.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise GanbenchError(f"study.trials must be a positive integer, got {trials!r}.")
    given = _override_keys(cfg, overrides)
    for name, spec in _knobs(cfg.study.space).items():
        for key in spec["set"]:
            if not isinstance(key, str) or not _known(cfg, key):
                raise GanbenchError(f"study.space.{name}.set names {key!r}, which is not a config key of this run "
                                    f"nor a knob of any loss or constraint.")
            clash = next((g for g in given if g == key or key.startswith(g + ".")), None)
            if clash and _lookup(cfg, key) is not _ABSENT:
                raise GanbenchError(f"{clash} is drawn by the study (study.space.{name}); leave it off the command "
                                    f"line, or take the knob out of the search with ~study.space.{name}.")
    assignments(cfg)


def apply(cfg: DictConfig, run_dir: Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """A study trial: set its drawn values in ``cfg`` (in place) and write ``run_dir/command.txt``, the plain
    `ganbench train` command that reruns it alone. Any other job: ``cfg`` unchanged. ``overrides``: the command
    line's (Hydra's own where a job runs), checked against the drawn keys."""
    if not is_study(cfg):
        return cfg
    if overrides is None and HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    check(cfg, overrides or [])
    values = assignments(cfg)
    for key, value in values.items():
        _set(cfg, key, value)
    if run_dir is not None:
        overrides = list(HydraConfig.get().overrides.task)
        text = command(overrides, cfg, values) + "\n"
        tmp = run_dir / f".command.txt.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / "command.txt")
    return cfg


def _is_study_override(o: str) -> bool:
    key = o.lstrip("+~").split("=", 1)[0]
    return key == "study" or key.startswith(("study.", "hydra.", "hydra/")) or key == "resume"


def _value(v) -> str:
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return repr(v) if isinstance(v, float) else str(v)


def command(overrides: list[str], cfg: DictConfig, values: dict[str, object]) -> str:
    """`ganbench train` with the job's own overrides (less the study, launcher and resume ones) and the drawn values
    spelled out; a list element (``optim.betas.0``) is written as its whole list."""
    drawn = {}
    for key in values:
        parent, _, last = key.rpartition(".")
        if last.isdigit() and isinstance(_lookup(cfg, parent), ListConfig):
            drawn[parent] = list(_lookup(cfg, parent))
        else:
            drawn[key] = _lookup(cfg, key)
    kept = [o for o in overrides if not _is_study_override(o) and o.lstrip("+~").split("=", 1)[0] not in drawn]
    parts = kept + [f"{k}={_value(v)}" for k, v in drawn.items()]
    return "ganbench train " + " ".join(shlex.quote(p) for p in parts)


# ---------------------------------------------------------------- the analysis


def best_of_k(values: list[float], lower_is_better: bool, k: int) -> tuple[float, float, float]:
    """(median, better end, worse end of the 95 % interval) of the best of k draws with replacement from
    ``values``, from the exact bootstrap distribution. Where the CDF meets a quantile exactly, the quantile is the
    midpoint of the two values (so k = 1 gives numpy's median)."""
    ranked = sorted(values, reverse=not lower_is_better)  # best first
    n = len(ranked)
    cdf = [1.0 - (1.0 - i / n) ** k for i in range(1, n + 1)]

    def quantile(p: float) -> float:
        for i, c in enumerate(cdf):
            if c >= p - 1e-12:
                if abs(c - p) <= 1e-12 and i + 1 < n:
                    return (ranked[i] + ranked[i + 1]) / 2
                return ranked[i]
        return ranked[-1]

    return quantile(0.5), quantile(0.025), quantile(0.975)


def curve(values: list[float], lower_is_better: bool) -> list[tuple[int, float, float, float]]:
    """(k, median, better end, worse end) for k = 1 … K."""
    return [(k, *best_of_k(values, lower_is_better, k)) for k in range(1, len(values) + 1)]


def rank(intervals: dict, lower_is_better: bool) -> list[tuple[int, object, list]]:
    """(rank, cell, cells tied with it) best first, from each cell's (median, better end, worse end). A cell's rank is
    1 + the number of cells that are better with intervals apart from its own; overlapping intervals are ties."""
    sign = 1.0 if lower_is_better else -1.0

    def span(c):  # (better, worse) as numbers where lower is better
        return sign * intervals[c][1], sign * intervals[c][2]

    def beats(a, b):  # a's whole interval better than b's
        return span(a)[1] < span(b)[0]

    order = sorted(intervals, key=lambda c: (sign * intervals[c][0], span(c)))
    out = []
    for c in order:
        tied = [d for d in order if d != c and not beats(d, c) and not beats(c, d)]
        out.append((1 + sum(beats(d, c) for d in order), c, tied))
    return out


@dataclass
class Cell:
    """The trials of one loss × constraint cell: trial → values (one per seed), hyperparameters, commands."""

    trials: dict[int, list[float]] = field(default_factory=dict)
    params: dict[int, dict] = field(default_factory=dict)
    commands: dict[int, str] = field(default_factory=dict)
    pending: int = 0  # runs not finished (running, missing, interrupted)


def _study_config(run) -> dict | None:
    """The config of a report row (:class:`ganbench.report.Run`) when it is a study trial's, else None."""
    study = run.config.get("study")
    return run.config if isinstance(study, dict) and "trial" in study else None


def is_study_sweep(runs) -> bool:
    return any(_study_config(r) for r in runs)


def _params(config: dict) -> dict:
    """The drawn keys of the space and the values the run had."""
    cfg = OmegaConf.create(config)
    out = {}
    for spec in _knobs(config["study"]["space"]).values():
        for key in spec["set"]:
            parent, _, last = key.rpartition(".")
            if last.isdigit() and isinstance(_lookup(cfg, parent), ListConfig):
                key = parent  # a list element (optim.betas.0): the whole list
            value = _lookup(cfg, key)
            if value is not _ABSENT:
                out[key] = value
    return out


def collect(sweep_dir: Path, runs, metric: str, lower_is_better: bool) -> dict[tuple[str, str], Cell]:
    """Cells of the study's runs: a completed run gives its final ``metric``, a failed or diverged one the worst
    value; a run not finished yet is counted as pending."""
    worst = math.inf if lower_is_better else -math.inf
    cells: dict[tuple[str, str], Cell] = {}
    for r in runs:
        config = _study_config(r)
        if config is None:
            continue
        cell = cells.setdefault((r.loss, r.constraint), Cell())
        trial = int(config["study"]["trial"])
        if r.status == "completed" and metric in r.metrics:
            value = r.metrics[metric]
        elif r.status in ("failed", "diverged"):
            value = worst
        else:
            cell.pending += 1
            continue
        cell.trials.setdefault(trial, []).append(value)
        cell.params[trial] = _params(config)
        path = sweep_dir / r.name / "command.txt"
        if path.is_file():
            cell.commands[trial] = path.read_text().strip()
    return cells


def _trial_value(values: list[float]) -> float:
    return float(np.mean(values))  # over the seeds a trial ran with (one, in a plain study)


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "failed"
    return f"{v:.3g}"


def _interval(m: float, a: float, b: float) -> str:
    lo, hi = sorted((a, b))
    return f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"


def analyse(sweep_dir: Path, runs, metric: str, lower_is_better: bool, out: Path) -> list[str]:
    """The study section of report.md for ``metric``, and ``study_<metric>.csv`` / ``study_<metric>.png`` in
    ``out``; no lines when no cell has a finished trial."""
    cells = {c: cell for c, cell in collect(sweep_dir, runs, metric, lower_is_better).items() if cell.trials}
    if not cells:
        return []
    values = {c: [_trial_value(v) for _, v in sorted(cell.trials.items())] for c, cell in cells.items()}
    curves = {c: curve(v, lower_is_better) for c, v in values.items()}
    budgets = sorted({len(v) for v in values.values()})
    direction = "lower" if lower_is_better else "higher"
    lines = ["", f"## Random-search study: {metric} ({direction} is better)", "",
             f"Best of k trials drawn from the cell's K (median [95 % interval], exact bootstrap, final {metric}; a "
             f"failed or diverged trial counts as the worst value). "
             + ("Every cell has the same K." if len(budgets) == 1 else
                f"**Unequal budgets** (K = {', '.join(map(str, budgets))}): compare the cells at the smallest K.")]
    pending = sum(cell.pending for cell in cells.values())
    if pending:
        lines[-1] += f" {pending} run(s) not finished yet are left out."
    lines += _curve_table(curves, max(budgets))
    lines += _summary_table(cells, values, metric, lower_is_better)
    lines += _ranking_table(curves, lower_is_better)
    lines += _seed_commands(cells, lower_is_better)
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in metric)
    _write_csv(curves, out / f"study_{name}.csv")
    lines.append("")
    try:
        draw(curves, metric, lower_is_better, out / f"study_{name}.png", sweep_dir.resolve().name)
        lines.append(f"![study_{name}.png](study_{name}.png)")
    except ImportError:
        lines.append("No figure: it needs matplotlib (pip install 'ganbench[sweep]').")
    return lines


def _curve_table(curves: dict, k_max: int) -> list[str]:
    lines = ["", "| loss | constraint | K | " + " | ".join(f"k={k}" for k in range(1, k_max + 1)) + " |",
             "|---|---|---|" + "---|" * k_max]
    for (loss, constraint), points in curves.items():
        row = [_interval(m, a, b) for _, m, a, b in points] + [""] * (k_max - len(points))
        lines.append(f"| {loss} | {constraint} | {len(points)} | " + " | ".join(row) + " |")
    return lines


def _best_trial(cell: Cell, lower_is_better: bool) -> int:
    return sorted(cell.trials, key=lambda t: _trial_value(cell.trials[t]), reverse=not lower_is_better)[0]


def _summary_table(cells: dict, values: dict, metric: str, lower_is_better: bool) -> list[str]:
    threshold = TRAINS.get(metric)
    rule = (f"{metric} {'≤' if lower_is_better else '≥'} {threshold:g}" if threshold is not None
            else "no threshold is set for this metric")
    lines = ["", f"Trains: {rule}. Best trial: its hyperparameters (the drawn keys the cell has).", "",
             "| loss | constraint | trains | best | median | worst | best trial | its hyperparameters |",
             "|---|---|---|---|---|---|---|---|"]
    for c, cell in cells.items():
        trial, v = _best_trial(cell, lower_is_better), values[c]
        trains = ("–" if threshold is None else
                  f"{sum((x <= threshold) if lower_is_better else (x >= threshold) for x in v)}/{len(v)}")
        best, worst = (min(v), max(v)) if lower_is_better else (max(v), min(v))
        params = " ".join(f"{k}={_value(x)}" for k, x in cell.params.get(trial, {}).items())
        lines.append(f"| {c[0]} | {c[1]} | {trains} | {_fmt(best)} | {_fmt(float(np.median(v)))} | {_fmt(worst)} "
                     f"| {trial} | `{params}` |")
    return lines


def _ranking_table(curves: dict, lower_is_better: bool) -> list[str]:
    at_full = {c: points[-1][1:] for c, points in curves.items()}
    lines = ["", "Ranking at the full budget (k = K); cells whose intervals overlap are tied.", "",
             "| rank | loss | constraint | best of K [95 % interval] | tied with |", "|---|---|---|---|---|"]
    for position, c, tied in rank(at_full, lower_is_better):
        lines.append(f"| {position} | {c[0]} | {c[1]} | {_interval(*at_full[c])} | "
                     f"{', '.join(f'{a} + {b}' for a, b in tied) or '–'} |")
    return lines


def _seed_commands(cells: dict, lower_is_better: bool) -> list[str]:
    """The `ganbench train -m ... seed=0,...` line of each cell's best trial: seeds and trials are separate axes."""
    commands = [cell.commands.get(_best_trial(cell, lower_is_better)) for cell in cells.values()]
    if not any(commands):
        return []
    seeds = ",".join(str(s) for s in range(BEST_SEEDS))
    return ["", f"{BEST_SEEDS} seeds of each cell's best trial (seeds and trials are separate axes):", "", "```bash",
            *(cmd.replace("ganbench train ", "ganbench train -m ", 1) + f" seed={seeds}" for cmd in commands if cmd),
            "```"]


def _write_csv(curves: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["loss", "constraint", "K", "k", "median", "interval_better", "interval_worse"])
        for (loss, constraint), points in curves.items():
            for k, m, a, b in points:
                w.writerow([loss, constraint, len(points), k, m, a, b])


def draw(curves: dict, metric: str, lower_is_better: bool, path: Path, title: str) -> None:
    """One panel per loss: each constraint's best-of-k median with its 95 % band, k = 1 … K."""
    import matplotlib  # heavy: loaded only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    losses = list(dict.fromkeys(loss for loss, _ in curves))
    finite = [x for points in curves.values() for p in points for x in p[1:] if math.isfinite(x)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    log = lower_is_better and low > 0 and high / low > 20
    edge = high * 1.5 if log else high + 0.05 * (high - low or 1.0)
    floor = low / 1.5 if log else low - 0.05 * (high - low or 1.0)
    fig, axes = plt.subplots(1, len(losses), figsize=(3.2 * len(losses) + 0.8, 3.4), dpi=120, sharey=True,
                             squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        for (cell_loss, constraint), points in curves.items():
            if cell_loss != loss:
                continue
            ks = [p[0] for p in points]

            def clip(x):  # a failed trial's ±inf drawn at the edge of the worse side
                return x if math.isfinite(x) else (edge if (x > 0) else floor)

            median = [clip(p[1]) for p in points]
            ends = [sorted((clip(p[2]), clip(p[3]))) for p in points]
            (line,) = ax.plot(ks, median, marker="o", markersize=3, label=constraint)
            ax.fill_between(ks, [e[0] for e in ends], [e[1] for e in ends], color=line.get_color(), alpha=0.2)
        ax.set_title(loss, fontsize=9)
        ax.set_xlabel("k (trials)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"best {metric} of k ({'lower' if lower_is_better else 'higher'} is better)")
    fig.suptitle(f"{metric}: best of k trials, median and 95 % bootstrap interval — {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
