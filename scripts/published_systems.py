"""The published systems ganbench is built around, each at its own setting (`recipe=paper`), on an image dataset:
does each train, and how far is it from hinge + sn on the same data and budget?

    python scripts/published_systems.py run outputs/paper/mnist_mini --seeds 0 1          # mnist_mini, 4,000 steps
    python scripts/published_systems.py run outputs/paper/digits --seeds 0 --steps 2000 -- \\
        dataset=folder dataset.root=PATH dataset.channels=1                              # any image folder
    python scripts/published_systems.py table outputs/paper/mnist_mini                   # the markdown table
    python scripts/published_systems.py figure outputs/paper/mnist_mini outputs/paper/digits --out grids.png

`run` starts one `ganbench train SYSTEM recipe=paper seed=S` per system and seed (a subprocess, one CPU thread,
``--jobs`` at a time) in ROOT/SYSTEM/seedS, with fd_classifier and prc_classifier (precision and recall in the same
feature space: recall near 0 is a collapse) at every evaluation; the overrides after ``--`` go to every run. A run
that already ended is kept as it is; an unfinished one continues from its checkpoint (`resume=auto`). `table`
reads every ROOT/SYSTEM/seedS/metrics.json and prints, per system, fd_classifier at each evaluation and at the end
(mean ± std over seeds), its ratio to hinge + sn's final mean, and the final precision and recall. Exit status 1
if a run failed (`run`) or a system has no finished run (`table`). `figure` puts the first rows of each run's last
sample grid side by side, a row per system and a column per ROOT.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# name -> the loss and constraint of the system; `recipe=paper` adds the source's optimizer, n_dis, batches, bursts.
SYSTEMS = {
    "sgan": ["loss=sgan", "constraint=none"],  # DCGAN, Radford et al. 2016
    "wgan_clip": ["loss=wgan", "constraint=clip"],  # WGAN, Arjovsky et al. 2017
    "wgan_gp": ["loss=wgan_gp", "constraint=none"],  # WGAN-GP, Gulrajani et al. 2017
    "hinge_sn": ["loss=hinge", "constraint=sn"],  # SN-GAN, Miyato et al. 2018
    "wgan_div": ["loss=wgan_div", "constraint=none"],  # WGAN-div, Wu et al. 2018
    "ganqp": ["loss=ganqp", "constraint=none"],  # GAN-QP, Su 2018
    "wgan_gn": ["loss=wgan", "constraint=gn"],  # GN-GAN, Wu et al. 2021
    "hinge_gran": ["loss=hinge", "constraint=gran"],  # GraN-GAN, Bhaskara et al. 2022
    "lsgan": ["loss=lsgan", "constraint=none"],  # LSGAN, Mao et al. 2017
}
REFERENCE = "hinge_sn"
METRICS = "metrics.names=[fd_classifier,prc_classifier]"


def command(system: str, seed: int, steps: int | None, extra: list[str], run_dir: Path) -> list[str]:
    cmd = ["ganbench", "train", *SYSTEMS[system], "recipe=paper", f"seed={seed}", *extra]
    cmd += [f"steps={steps}"] if steps else []
    return cmd + [METRICS, "cpu_threads=1", "progress=false", f"hydra.run.dir={run_dir}"]


def record(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def run_one(system: str, seed: int, args) -> str:
    run_dir = args.root / system / f"seed{seed}"
    rec = record(run_dir)
    if rec and rec.get("status") == "completed":
        return f"{system} seed {seed}: already completed"
    cmd = command(system, seed, args.steps, args.overrides, run_dir)
    cmd += ["resume=auto"] if (run_dir / "checkpoints").is_dir() else []
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "ganbench.cli", *cmd[1:]], capture_output=True, text=True)
    line = f"{system} seed {seed}: exit {proc.returncode} in {time.time() - start:.0f} s: {shlex.join(cmd)}"
    if proc.returncode:
        line += "\n  " + (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(line, file=sys.stderr, flush=True)
    return line


def run(args) -> int:
    jobs = [(s, seed) for seed in args.seeds for s in args.systems]
    with ThreadPoolExecutor(args.jobs) as pool:
        lines = list(pool.map(lambda job: run_one(*job, args), jobs))
    print("\n".join(lines))
    return 1 if any(": exit " in line and ": exit 0 " not in line for line in lines) else 0


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.2g}"


def table(args) -> int:
    rows, finals = [], {}
    for system in args.systems:
        seeds = sorted((args.root / system).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0)
        recs = [(p.name, r) for p in seeds if (r := record(p)) and r.get("status") == "completed"]
        finals[system] = [r["metrics"]["fd_classifier"] for _, r in recs]
        per_seed = "; ".join(f"{name[4:]}: " + " / ".join(f"{h['metrics']['fd_classifier']:.0f}" for h in r["history"])
                             for name, r in recs)
        prec = [r["metrics"].get("precision_classifier") for _, r in recs]
        rec_ = [r["metrics"].get("recall_classifier") for _, r in recs]
        steps = recs[0][1]["step"] if recs else "–"
        rows.append((system, recs, per_seed, steps, prec, rec_))
    ref = statistics.fmean(finals[REFERENCE]) if finals.get(REFERENCE) else None
    print(f"| system (`recipe=paper`) | seeds | fd_classifier per evaluation, by seed | final fd_classifier | "
          f"× {REFERENCE} | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for system, recs, per_seed, steps, prec, rec_ in rows:
        final = finals[system]
        ratio = f"{statistics.fmean(final) / ref:.2g}×" if ref and final else "–"
        print(f"| {system} (`{' '.join(SYSTEMS[system])}`) | {len(recs)} | {per_seed or '–'} | "
              f"{_mean_std(final)} at {steps} | {ratio} | {_mean_std([p for p in prec if p is not None])} | "
              f"{_mean_std([r for r in rec_ if r is not None])} |")
    return 0 if all(finals.values()) else 1


def figure(args) -> int:
    """One row per system, one column per root: the first ``--rows`` rows of each run's last sample grid."""
    from PIL import Image, ImageDraw

    cells, missing = {}, []
    for system in args.systems:
        for root in args.roots:
            grids = sorted((root / system / f"seed{args.seed}" / "samples").glob("step_*.png"))
            if not grids:
                missing.append(f"{root}/{system}")
                continue
            grid = Image.open(grids[-1]).convert("RGB")
            cells[system, root] = grid.crop((0, 0, grid.width, 2 + args.rows * (grid.height - 2) // 8))
    if not cells:
        print("published_systems: no sample grids found", file=sys.stderr)
        return 1
    w, h = max(c.width for c in cells.values()), max(c.height for c in cells.values())
    label, head = 110, 16
    out = Image.new("RGB", (label + len(args.roots) * (w + 6), head + len(args.systems) * (h + 4)), "white")
    draw = ImageDraw.Draw(out)
    for j, root in enumerate(args.roots):
        draw.text((label + j * (w + 6) + 2, 2), f"{root.name}, seed {args.seed}", fill="black")
    for i, system in enumerate(args.systems):
        draw.text((4, head + i * (h + 4) + h // 2 - 6), system, fill="black")
        for j, root in enumerate(args.roots):
            if (system, root) in cells:
                out.paste(cells[system, root], (label + j * (w + 6), head + i * (h + 4)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"wrote {args.out}" + (f" (no samples: {', '.join(missing)})" if missing else ""))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("run", "table"):
        p = sub.add_parser(name)
        p.add_argument("root", type=Path, help="one folder per system, one seedS run directory in each")
        p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
        if name == "run":
            p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
            p.add_argument("--steps", type=int, default=None, help="generator updates (default: train.yaml's)")
            p.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each")
    p = sub.add_parser("figure")
    p.add_argument("roots", type=Path, nargs="+", help="one column each (e.g. two datasets)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=2, help="rows of 8 samples per run (of the grid's 8)")
    cut = argv.index("--") if "--" in argv else len(argv)  # after --: config overrides for every run
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]
    return {"run": run, "table": table, "figure": figure}[args.what](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
