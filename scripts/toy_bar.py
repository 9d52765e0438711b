"""PacGAN's bar on the 2D toys: do hinge + sn, wgan_gp, wgan + gn and ganqp + none cover every mode of ring8 and
grid25 with ≥ 90 % high-quality samples, with the documented toy settings?

    python scripts/toy_bar.py                       # all 8 checks, seed 0, 2 runs at a time
    python scripts/toy_bar.py --seeds 0 1 --only grid25 --jobs 2

Each check is one real `ganbench train` run (a subprocess, one CPU thread) with the preset named in CHECKS; the
values are read from its metrics.json (EMA generator, 2,500 samples). Prints one line per run (modes, high-quality
fraction, W1, wall time, PASS/FAIL) and exits 1 if any run misses the bar. Run time measured here, two runs sharing
2 cores: ring8 about 2.5 min a run; grid25 3–5 min (hinge + sn, ganqp), 13 min (wgan + gn, batch 1024) and 27 min
(wgan_gp, batch 2048).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# (dataset, pair, modes of the dataset, overrides). The grid25 presets hold each pair's settings; see README.
CHECKS = [
    ("ring8", "hinge+sn", 8, ["experiment=ring8_study"]),
    ("ring8", "wgan_gp", 8, ["experiment=ring8_study", "loss=wgan_gp", "constraint=none"]),
    ("ring8", "wgan+gn", 8, ["experiment=ring8_study", "loss=wgan", "constraint=gn"]),
    ("ring8", "ganqp+none", 8, ["experiment=ring8_study", "loss=ganqp", "constraint=none"]),
    ("grid25", "hinge+sn", 25, ["experiment=grid25_hinge_sn"]),
    ("grid25", "wgan_gp", 25, ["experiment=grid25_wgan_gp"]),
    ("grid25", "wgan+gn", 25, ["experiment=grid25_wgan_gn"]),
    ("grid25", "ganqp+none", 25, ["experiment=grid25_ganqp"]),
]
HQ_BAR = 0.90


def train(out: Path, name: str, overrides: list[str], seed: int) -> dict:
    """One `ganbench train` run in ``out/name``; returns its metrics.json (or an error record)."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "ganbench.cli", "train", *overrides, f"seed={seed}", "device=cpu", "cpu_threads=1",
           "progress=false", f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": f"exit {proc.returncode}: {last[0]}", "wall": wall}
    record = json.loads((run_dir / "metrics.json").read_text())
    return {**record["metrics"], "step": record["step"], "wall": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", choices=["ring8", "grid25"], help="run the checks of one dataset only")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one CPU thread)")
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_bar"), help="parent of the run directories")
    parser.add_argument("--steps", type=int, help="override every preset's steps (a smoke run; the bar needs theirs)")
    args = parser.parse_args(argv)

    extra = [f"steps={args.steps}"] if args.steps else []
    todo = [(ds, pair, modes, overrides + extra, seed) for seed in args.seeds
            for ds, pair, modes, overrides in CHECKS if args.only in (None, ds)]
    names = [f"{ds}_{pair.replace('+', '_')}_seed{seed}" for ds, pair, _, _, seed in todo]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda i: train(args.out, names[i], todo[i][3], todo[i][4]), range(len(todo))))

    failed = 0
    print(f"{'dataset':8} {'pair':11} {'seed':>4} {'modes':>7} {'hq':>6} {'w1':>7} {'wall':>7}  "
          f"bar: all modes, hq ≥ {HQ_BAR}")
    for (ds, pair, modes, _, seed), res in zip(todo, results):
        if "error" in res:
            failed += 1
            print(f"{ds:8} {pair:11} {seed:>4}  ERROR {res['error']}")
            continue
        ok = res["modes"] == modes and res["hq"] >= HQ_BAR
        failed += not ok
        print(f"{ds:8} {pair:11} {seed:>4} {res['modes']:>3}/{modes:<3} {res['hq']:6.3f} {res['w1']:7.3f} "
              f"{res['wall']:6.0f}s  {'PASS' if ok else 'FAIL'}")
    print(f"{len(todo) - failed}/{len(todo)} runs meet the bar; run directories under {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
