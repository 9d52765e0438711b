"""`ganbench report SWEEP_DIR [--metric NAME] [--out DIR]`: one table and one heatmap for a multirun sweep.

Reads ``<run>/metrics.json`` and ``<run>/.hydra/{overrides,hydra}.yaml`` of every job directory directly under the
sweep directory, never the TensorBoard event files (``train.py`` writes ``metrics.json`` for that purpose). A sweep
that is still running or partly failed is fine: every job directory gets a row with its status (``completed``,
``running``, ``interrupted``, ``diverged``, ``failed``, ``missing`` = no metrics.json yet, ``unreadable``); jobs the
launcher has not started yet have no directory and no row.

Writes ``report.md`` and ``report.csv`` (one row per run: final metrics and the best value of each metric over the
run's evaluations; for 2D toys also one row per setting over its seeds: how many seeds meet PacGAN's bar, all modes
and hq ≥ 0.9, with mean ± std of hq and W1) and ``heatmap_<metric>.png`` (loss × constraint, mean ± std of the final
value over the runs of a cell: seeds and any other overrides), and prints the markdown.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ganbench import rundir, study
from ganbench.errors import GanbenchError

USAGE = "ganbench report SWEEP_DIR [--metric NAME] [--out DIR]"
# Preferred column order and the default heatmap metric (the first of these any run reports).
PREFERRED = ("w1", "modes", "hq", "fid")
# Metrics where lower is better; every other metric (modes, hq, is, ...) is better when higher.
LOWER_IS_BETTER = ("w1", "fd", "fid", "kid")
NOT_DONE = ("failed", "diverged")
# PacGAN's bar on the 2D toys: every mode covered and at least this fraction of high-quality samples.
TOY_MODES = {"ring8": 8, "grid25": 25}
HQ_BAR = 0.90


def lower_is_better(metric: str) -> bool:
    return metric.lower().startswith(LOWER_IS_BETTER)


@dataclass
class Run:
    """One job directory of the sweep, as read from its files."""

    name: str
    status: str
    overrides: list[str] = field(default_factory=list)
    loss: str = "?"
    constraint: str = "?"
    dataset: str = "?"
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    path: str = ""  # how it executed: graph, or eager and why (metrics.json's execution record)
    note: str = ""  # the error of a failed run, or why a record is missing
    config: dict = field(default_factory=dict)  # the record's composed config (a study reads its trial from it)


def _numbers(d: dict) -> dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def _best(history: list, final: dict[str, float]) -> dict[str, float]:
    """Best value of each metric over the logged evaluations (and the final value)."""
    values: dict[str, list[float]] = {}
    for point in [*(history or []), {"metrics": final}]:
        for k, v in _numbers(point.get("metrics", {}) if isinstance(point, dict) else {}).items():
            values.setdefault(k, []).append(v)
    return {k: (min if lower_is_better(k) else max)(vs) for k, vs in values.items()}


def _load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _choice(group: str, choices: dict, overrides: list[str], config: dict) -> str:
    """The option of a config group: Hydra's recorded choice, else the override, else the class name."""
    if choices.get(group):
        return str(choices[group])
    for o in overrides:
        if o.startswith(f"{group}="):
            return o.split("=", 1)[1]
    target = (config.get(group) or {}).get("_target_", "") if isinstance(config, dict) else ""
    return target.rsplit(".", 1)[-1] or "?"


def _mapping(node, *keys) -> dict:
    """``node[keys[0]][keys[1]]...`` where each level is a mapping; {} where one is not."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def read_run(run_dir: Path) -> Run:
    """One job's row: what its metrics.json (through :func:`ganbench.rundir.read_record`) and .hydra/ files say; a
    missing or unreadable record is a row that says which, and why."""
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    choices = _mapping(_load_yaml(run_dir / ".hydra" / "hydra.yaml"), "hydra", "runtime", "choices")
    note = "no metrics.json yet (starting, or stopped before its first record)"
    run = Run(run_dir.name, "missing", overrides, note=note)
    try:
        record = rundir.read_record(run_dir)
    except rundir.RecordProblem as e:
        record = {}
        if e.status != "missing":
            run.status, run.note = e.status, f"metrics.json {e.why}"
    if record:
        run.status, run.note = str(record.get("status", "unknown")), str(record.get("error") or "")
        run.step = record.get("step")
        run.metrics = _numbers(record.get("metrics"))
        run.best = _best(record.get("history"), run.metrics)
        run.wall_time_s = record.get("wall_time_s")
        run.path = _path(record.get("execution"))
    config = record.get("config") or {}
    run.config = config if isinstance(config, dict) else {}
    run.loss = _choice("loss", choices, overrides, config)
    run.constraint = _choice("constraint", choices, overrides, config)
    run.dataset = _choice("dataset", choices, overrides, config)
    return run


def _path(execution) -> str:
    """``graph``, or ``eager (<reason>)``; '' for a record without one."""
    if not isinstance(execution, dict) or "path" not in execution:
        return ""
    reason = execution.get("reason")
    return f"{execution['path']} ({reason})" if reason and execution["path"] != "graph" else str(execution["path"])


def _path_note(runs: list[Run]) -> list[str]:
    """One line when the jobs took different execution paths (graph vs eager); none when they agree."""
    kinds = {r.path.split(" ")[0] for r in runs if r.path}
    if len(kinds) < 2:
        return []
    counts = ", ".join(f"{sum(r.path.split(' ')[0] == k for r in runs)} {k}" for k in sorted(kinds))
    return ["", f"Note: the jobs took different execution paths ({counts}); see the path column."]


def _job_order(path: Path):
    m = re.match(r"(\d+)", path.name)
    return (0, int(m.group(1)), path.name) if m else (1, 0, path.name)


def read_sweep(sweep_dir: Path) -> list[Run]:
    """Every job directory directly under ``sweep_dir`` (one with metrics.json or .hydra/), in job order."""
    if not sweep_dir.is_dir():
        raise GanbenchError(f"{sweep_dir} is not a directory; give a sweep directory such as "
                            f"outputs/multirun/<date>_<time>.")
    try:
        entries = list(sweep_dir.iterdir())
    except OSError as e:
        raise GanbenchError(f"cannot read the sweep directory {sweep_dir} ({e.strerror or e}).") from None
    dirs = [p for p in entries if p.is_dir() and not p.name.startswith(".")
            and (os.path.lexists(p / "metrics.json") or (p / ".hydra").is_dir())]
    if not dirs and os.path.lexists(sweep_dir / "metrics.json"):
        dirs = [sweep_dir]  # a single run directory: a report of one
    if not dirs:
        raise GanbenchError(f"{sweep_dir} holds no runs (no <run>/metrics.json or <run>/.hydra/); give a sweep "
                            f"directory such as outputs/multirun/<date>_<time>.")
    return [read_run(p) for p in sorted(dirs, key=_job_order)]


def metric_names(runs: list[Run]) -> list[str]:
    names = {k for r in runs for k in (*r.metrics, *r.best)}
    return sorted(names, key=lambda k: (PREFERRED.index(k) if k in PREFERRED else len(PREFERRED), k))


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _split_overrides(runs: list[Run]) -> tuple[list[str], dict[str, list[str]]]:
    """Overrides every run shares, and the ones that vary, per run."""
    common = [o for o in runs[0].overrides if all(o in r.overrides for r in runs)] if runs else []
    return common, {r.name: [o for o in r.overrides if o not in common] for r in runs}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def seed_summary(runs: list[Run]) -> list[dict]:
    """2D-toy runs grouped by setting (dataset, loss, constraint and every varying override but ``seed=``): the
    seeds run, how many meet PacGAN's bar (all modes, hq ≥ 0.9; a failed or unfinished run does not), and the
    mean ± std of hq and W1 over the completed runs. Empty when no run is on a 2D toy."""
    _, varying = _split_overrides(runs)
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if r.dataset in TOY_MODES:
            shown = ("seed=", "dataset=", "loss=", "constraint=")
            rest = " ".join(o for o in varying[r.name] if not o.startswith(shown))
            groups.setdefault((r.dataset, r.loss, r.constraint, rest), []).append(r)
    out = []
    for (dataset, loss, constraint, rest), group in groups.items():
        done = [r for r in group if r.status == "completed" and {"modes", "hq", "w1"} <= r.metrics.keys()]
        met = sum(r.metrics["modes"] >= TOY_MODES[dataset] and r.metrics["hq"] >= HQ_BAR for r in done)
        out.append({"dataset": dataset, "loss": loss, "constraint": constraint, "overrides": rest, "n": len(group),
                    "completed": len(done), "met": met, "hq": _mean_std([r.metrics["hq"] for r in done]),
                    "w1": _mean_std([r.metrics["w1"] for r in done])})
    return out


def _seed_lines(runs: list[Run]) -> list[str]:
    rows = seed_summary(runs)
    if not rows:
        return []
    lines = ["", f"## Over seeds: PacGAN's bar (all modes, hq ≥ {HQ_BAR})", "",
             "| dataset | loss | constraint | other overrides | seeds meeting the bar | hq mean ± std | "
             "W1 mean ± std |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        unfinished = f" ({row['n'] - row['completed']} not completed)" if row["completed"] < row["n"] else ""
        lines.append(f"| {row['dataset']} | {row['loss']} | {row['constraint']} | {row['overrides']} | "
                     f"{row['met']}/{row['n']}{unfinished} | {row['hq']} | {row['w1']} |")
    return lines


def to_markdown(runs: list[Run], metrics: list[str], sweep_dir: Path, heatmap: str | None) -> str:
    common, varying = _split_overrides(runs)
    counts = {}
    for r in runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    best_rule = ", ".join(f"{m}: {'min' if lower_is_better(m) else 'max'}" for m in metrics) or "no metrics"
    lines = [f"# Sweep report: {sweep_dir}", "",
             f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ". "
             f"Metrics are the final evaluation; *best* is over the run's evaluations ({best_rule}).", ""]
    if common:
        lines += ["Common overrides: `" + " ".join(common) + "`", ""]
    header = ["run", "overrides", "status", "step", *metrics, *(f"best {m}" for m in metrics), "wall time (s)",
              "path"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in runs:
        cells = [r.name, " ".join(varying[r.name]), r.status, _fmt(r.step),
                 *(_fmt(r.metrics.get(m)) for m in metrics), *(_fmt(r.best.get(m)) for m in metrics),
                 _fmt(r.wall_time_s), r.path]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += _path_note(runs)
    lines += _seed_lines(runs)
    unfinished = [r for r in runs if r.status != "completed"]
    if unfinished:
        lines += ["", "## Runs that did not complete", ""]
        lines += [f"- `{r.name}` ({r.status})" + (f": {r.note}" if r.note else "") for r in unfinished]
    if heatmap:
        lines += ["", f"![{heatmap}]({heatmap})"]
    return "\n".join(lines) + "\n"


def write_csv(runs: list[Run], metrics: list[str], path: Path) -> None:
    header = ["run", "overrides", "loss", "constraint", "status", "step", *metrics, *(f"best_{m}" for m in metrics),
              "wall_time_s", "error", "path"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in runs:
            w.writerow([r.name, " ".join(r.overrides), r.loss, r.constraint, r.status, "" if r.step is None else r.step,
                        *(r.metrics.get(m, "") for m in metrics), *(r.best.get(m, "") for m in metrics),
                        "" if r.wall_time_s is None else r.wall_time_s, r.note if r.status != "completed" else "",
                        r.path])


def cell_stats(runs: list[Run], metric: str) -> tuple[list[str], list[str], dict]:
    """Losses (rows), constraints (columns), in order of first appearance, and per cell: the completed runs'
    final values and the statuses of the others."""
    losses = list(dict.fromkeys(r.loss for r in runs))
    constraints = list(dict.fromkeys(r.constraint for r in runs))
    cells: dict[tuple[str, str], dict] = {}
    for r in runs:
        cell = cells.setdefault((r.loss, r.constraint), {"values": [], "failed": 0, "other": []})
        if r.status == "completed" and metric in r.metrics:
            cell["values"].append(r.metrics[metric])
        elif r.status in NOT_DONE:
            cell["failed"] += 1
        else:
            cell["other"].append(r.status)
    return losses, constraints, cells


def _cell_text(cell: dict) -> str:
    values, lines = cell["values"], []
    if values:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"{mean:.3g}±{std:.2g}" if len(values) > 1 else f"{mean:.3g}")
        if len(values) > 1:
            lines.append(f"n={len(values)}")
    if cell["failed"]:
        lines.append("failed" if not values else f"{cell['failed']} failed")
    for status in dict.fromkeys(cell["other"]):  # running, missing, interrupted, ...: not in the mean
        lines.append(f"{cell['other'].count(status)} {status}")
    return "\n".join(lines)


def draw_heatmap(runs: list[Run], metric: str, path: Path, title: str) -> None:
    """Loss × constraint grid of the metric's mean ± std; failed cells hatched red, empty cells grey."""
    import matplotlib  # heavy (about 1 s to import): loaded only when a heatmap is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses, constraints, cells = cell_stats(runs, metric)
    grid = np.full((len(losses), len(constraints)), np.nan)
    for (loss, constraint), cell in cells.items():
        if cell["values"]:
            grid[losses.index(loss), constraints.index(constraint)] = statistics.fmean(cell["values"])
    low = lower_is_better(metric)
    # brighter = better either way; cells without a value are grey
    cmap = matplotlib.colormaps["viridis_r" if low else "viridis"].with_extremes(bad="#dddddd")
    fig, ax = plt.subplots(figsize=(max(5.0, 2.2 + 1.5 * len(constraints)), max(3.2, 1.6 + 0.9 * len(losses))), dpi=120)
    finite = grid[np.isfinite(grid)]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto",
                      vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    span = (finite.max() - finite.min()) if finite.size else 0
    for (loss, constraint), cell in cells.items():
        i, j = losses.index(loss), constraints.index(constraint)
        if cell["failed"] and not cell["values"]:
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f4c7c3", edgecolor="#c0392b",
                                       hatch="//", linewidth=1.5))
        value = grid[i, j]
        good = np.isfinite(value) and span > 0 and (value - finite.min()) / span > 0.5
        dark_text = np.isfinite(value) and (good != low)  # the bright end of viridis needs dark text
        color = "#c0392b" if cell["failed"] and not cell["values"] else ("black" if dark_text or not
                                                                            np.isfinite(value) else "white")
        ax.text(j, i, _cell_text(cell), ha="center", va="center", fontsize=8, color=color,
                fontweight="bold" if cell["failed"] else "normal")
    ax.set_xticks(range(len(constraints)), constraints)
    ax.set_yticks(range(len(losses)), losses)
    ax.set_xlabel("constraint")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=f"{metric} ({'lower' if low else 'higher'} is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pick_metric(runs: list[Run], asked: str | None) -> str | None:
    present = [m for m in metric_names(runs) if any(m in r.metrics for r in runs)]
    if asked is not None:
        if asked not in present:
            raise GanbenchError(f"no run reports the metric '{asked}'; choose one of: "
                                f"{', '.join(present) or 'none (no run has recorded metrics yet)'}.")
        return asked
    return next((m for m in PREFERRED if m in present), present[0] if present else None)


def _safe_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every ganbench error
        raise GanbenchError(f"{message}; usage: {USAGE}.")


def main(argv: list[str]) -> int:
    parser = _Parser(prog="ganbench report", description="Table and heatmap of a multirun sweep directory.")
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory, e.g. outputs/multirun/<date>_<time>")
    parser.add_argument("--metric", help="metric of the heatmap (default: the first of w1, modes, hq, fid present)")
    parser.add_argument("--out", type=Path, help="where to write report.md/csv and the heatmap (default: SWEEP_DIR)")
    args = parser.parse_args(argv)

    runs = read_sweep(args.sweep_dir)
    metrics = metric_names(runs)
    metric = _pick_metric(runs, args.metric)
    out = args.out or args.sweep_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GanbenchError(f"cannot create --out {out} ({e.strerror}).") from None

    heatmap, note = None, ""
    if metric is None:
        note = "no heatmap: no run has recorded metrics yet (image datasets record none)."
    else:
        try:
            heatmap = f"heatmap_{_safe_name(metric)}.png"
            draw_heatmap(runs, metric, out / heatmap,
                         f"{metric}: final value, mean ± std over runs\n{args.sweep_dir.resolve().name}")
        except ImportError:
            heatmap, note = None, "no heatmap: it needs matplotlib (pip install 'ganbench[sweep]')."
        except OSError as e:
            raise GanbenchError(f"cannot write {out / heatmap} ({e.strerror or e}); give --out a writable "
                                f"directory.") from None
    text = to_markdown(runs, metrics, args.sweep_dir, heatmap)
    if metric is not None and study.is_study_sweep(runs):  # best-of-k curves, ranking, figure
        for m in dict.fromkeys([metric, *(["hq"] if "hq" in metrics else [])]):
            text += "\n".join(study.analyse(args.sweep_dir, runs, m, lower_is_better(m), out)) + "\n"
    try:
        (out / "report.md").write_text(text)
        write_csv(runs, metrics, out / "report.csv")
    except OSError as e:
        raise GanbenchError(f"cannot write the report into {out} ({e.strerror or e}); give --out a writable "
                            f"directory.") from None
    print(text, end="")
    written = ["report.md", "report.csv", *([heatmap] if heatmap else [])]
    print(f"\nwrote {', '.join(str(out / w) for w in written)}")
    if note:
        print(note)
    print(f"compare the runs in TensorBoard (HParams tab): tensorboard --logdir {args.sweep_dir}")
    return 0
