"""PacGAN's bar on the 2D toys: in how many of N seeds do hinge + sn, wgan_gp, wgan + gn and ganqp + none cover every
mode of ring8 and grid25 with ≥ 90 % high-quality samples, with the documented toy settings?

    python scripts/toy_bar.py                       # all 8 checks, seeds 0-4, 2 runs at a time
    python scripts/toy_bar.py --seeds 0 1 --only grid25 --jobs 2
    python scripts/toy_bar.py --only grid25 --reuse   # add seeds 2-4, reading the finished seed 0 and 1 runs

Each check is one real `ganbench train` run (a subprocess, one CPU thread) with the preset named in CHECKS; the
values are read from its metrics.json (EMA generator, 2,500 samples). Each run's line (modes, high-quality fraction,
W1, wall time, meets the bar or not) goes to stderr as the run ends, "toy_bar: [k/N] ..."; at the end stdout gets
every run's line in order, then one line per pair: how many of the N seeds meet the bar and the mean ± std over
seeds of hq and W1. Exits 1 if a pair meets the bar in fewer than ``--need`` seeds (default: 4 of 5, i.e. ⌈0.8·N⌉)
or a run fails. Ctrl-C or SIGTERM stops every run in flight (each saves a checkpoint), prints what finished and exits
130 / 143; ``--reuse`` then resumes the stopped runs. Run time measured here, two runs sharing 2 cores: ring8 about
2.5 min a run (ganqp 5 min); grid25 3–7 min (hinge + sn, wgan_gp), about 16 min (ganqp, batch 1024) and about
21 min (wgan + gn, batch 1024, n_dis 5).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# (dataset, pair, modes of the dataset, overrides). The ring8_* and grid25_* presets hold each pair's settings where
# it needs more than its dataset's shared study setting; see docs/RESULTS.md.
CHECKS = [
    ("ring8", "hinge+sn", 8, ["experiment=ring8_study"]),
    ("ring8", "wgan_gp", 8, ["experiment=ring8_wgan_gp"]),
    ("ring8", "wgan+gn", 8, ["experiment=ring8_wgan_gn"]),
    ("ring8", "ganqp+none", 8, ["experiment=ring8_ganqp"]),
    ("grid25", "hinge+sn", 25, ["experiment=grid25_hinge_sn"]),
    ("grid25", "wgan_gp", 25, ["experiment=grid25_wgan_gp"]),
    ("grid25", "wgan+gn", 25, ["experiment=grid25_wgan_gn"]),
    ("grid25", "ganqp+none", 25, ["experiment=grid25_ganqp"]),
]
HQ_BAR = 0.90
DEFAULT_SEEDS = [0, 1, 2, 3, 4]


def meets_bar(res: dict, modes: int) -> bool:
    """PacGAN's bar: every mode covered and at least 90 % high-quality samples."""
    return "error" not in res and res["modes"] == modes and res["hq"] >= HQ_BAR


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def summarize(rows: list[tuple[str, str, int, dict]], need: int | None = None) -> list[dict]:
    """One entry per (dataset, pair), in first-seen order, from ``rows`` = (dataset, pair, modes, result) per seed.

    Each entry: ``met`` (seeds meeting the bar), ``n`` (seeds run), ``need``, ``ok`` (met ≥ need), ``errors`` and
    the mean ± std over the seeds that ran of hq and W1 (text) and of modes.
    """
    groups: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for ds, pair, modes, res in rows:
        groups.setdefault((ds, pair), []).append((modes, res))
    out = []
    for (ds, pair), runs in groups.items():
        n = len(runs)
        k = need if need is not None else math.ceil(0.8 * n)
        done = [res for _, res in runs if "error" not in res]
        met = sum(meets_bar(res, modes) for modes, res in runs)
        out.append({"dataset": ds, "pair": pair, "modes": runs[0][0], "n": n, "met": met, "need": k,
                    "errors": n - len(done), "ok": met >= k and len(done) == n,
                    "modes_mean": statistics.fmean([r["modes"] for r in done]) if done else float("nan"),
                    "hq": _mean_std([r["hq"] for r in done]), "w1": _mean_std([r["w1"] for r in done])})
    return out


def earlier(run_dir: Path, args: list[str]) -> dict | None:
    """metrics.json of the run in ``run_dir`` if it was made with exactly the overrides ``args``, else None."""
    try:
        made_with = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        record = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return record if made_with == args else None


class Children:
    """The `ganbench train` runs in flight. A stop signal to toy_bar (Ctrl-C, SIGTERM) is passed on to each of them as
    SIGTERM, so each saves its checkpoint and exits, and no new run starts; toy_bar then prints what it has and exits
    with the signal's code. Without this, a `kill` of toy_bar left its runs going."""

    def __init__(self):
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.signum: int | None = None

    def run(self, cmd: list[str]) -> tuple[int, str] | None:
        """Run ``cmd`` to its end: (exit code, its last output line), or None if toy_bar was stopped before it began."""
        with self.lock:
            if self.signum is not None:
                return None
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.live.add(proc)
        try:
            out, err = proc.communicate()
        finally:
            with self.lock:
                self.live.discard(proc)
        return proc.returncode, ((err or out).strip().splitlines()[-1:] or ["(no output)"])[0]

    def stop(self, signum, frame=None) -> None:
        with self.lock:
            first, live = self.signum is None, list(self.live)
            self.signum = signum
            for proc in live:
                proc.send_signal(signal.SIGTERM)
        if first:
            print(f"toy_bar: {signal.Signals(signum).name}: stopping {len(live)} run(s) (each saves a checkpoint; "
                  "--reuse resumes them)", file=sys.stderr, flush=True)


def train(out: Path, name: str, overrides: list[str], seed: int, reuse: bool = False,
          children: Children | None = None) -> dict:
    """One `ganbench train` run in ``out/name``; returns its metrics.json (or an error record). With ``reuse``, a
    completed run already in ``out/name`` with the same overrides is read instead of run again, and an interrupted
    one is resumed from its checkpoint."""
    run_dir = out / name
    args = [*overrides, f"seed={seed}", "device=cpu", "cpu_threads=1", "progress=false"]
    before = earlier(run_dir, args) if reuse else None
    if before is not None and before.get("status") == "completed":
        return _result(before, before.get("wall_time_s", float("nan")))
    cmd = [sys.executable, "-m", "ganbench.cli", "train"]
    if before is not None and before.get("status") == "interrupted" and (run_dir / "checkpoints" / "last.pt").is_file():
        cmd.append(f"resume={run_dir}")
    else:
        cmd += [*args, f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    ran = (children or Children()).run(cmd)
    wall = time.time() - t0
    if ran is None:
        return {"error": "not started: toy_bar was stopped", "wall": 0.0}
    code, last = ran
    if code != 0:
        return {"error": f"exit {code}: {last}", "wall": wall}
    return _result(json.loads((run_dir / "metrics.json").read_text()), wall)


def _result(record: dict, wall: float) -> dict:
    """One run's row: its metrics.json's last metrics, its step and the wall time."""
    return {**record["metrics"], "step": record["step"], "wall": wall}


def run_line(ds: str, pair: str, seed: int, modes: int, res: dict) -> str:
    """One run's line of the table: modes, hq, W1, wall time and whether it meets the bar (or its error)."""
    if "error" in res:
        return f"{ds:8} {pair:11} {seed:>4}  ERROR {res['error']}"
    return (f"{ds:8} {pair:11} {seed:>4} {res['modes']:>3}/{modes:<3} {res['hq']:6.3f} {res['w1']:7.3f} "
            f"{res['wall']:6.0f}s  {'meets' if meets_bar(res, modes) else 'misses'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
    parser.add_argument("--need", type=int, help="seeds a pair must pass (default ⌈0.8·N⌉: 4 of 5)")
    parser.add_argument("--only", choices=["ring8", "grid25"], help="run the checks of one dataset only")
    parser.add_argument("--pair", choices=sorted({pair for _, pair, _, _ in CHECKS}), action="append",
                        help="run the checks of this pair only (repeatable)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one CPU thread)")
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_bar"), help="parent of the run directories")
    parser.add_argument("--steps", type=int, help="override every preset's steps (a smoke run; the bar needs theirs)")
    parser.add_argument("--reuse", action="store_true",
                        help="read a completed run already in --out made with the same overrides instead of rerunning "
                             "it (e.g. to add seeds; runs made by an older ganbench are reused too), and resume one "
                             "that a stop signal interrupted")
    args = parser.parse_args(argv)

    extra = [f"steps={args.steps}"] if args.steps else []
    todo = [(ds, pair, modes, overrides + extra, seed) for ds, pair, modes, overrides in CHECKS
            if args.only in (None, ds) and (not args.pair or pair in args.pair) for seed in args.seeds]
    names = [f"{ds}_{pair.replace('+', '_')}_seed{seed}" for ds, pair, _, _, seed in todo]
    children = Children()
    lock, finished = threading.Lock(), [0]

    def one(i: int) -> dict:
        """Train (or read) check i and print its row on stderr as it ends: a grid25 sweep runs for hours."""
        ds, pair, modes, overrides, seed = todo[i]
        res = train(args.out, names[i], overrides, seed, args.reuse, children)
        with lock:
            finished[0] += 1
            print(f"toy_bar: [{finished[0]}/{len(todo)}] {run_line(ds, pair, seed, modes, res)}", file=sys.stderr,
                  flush=True)
        return res

    handlers = {s: signal.signal(s, children.stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, range(len(todo))))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)

    print(f"{'dataset':8} {'pair':11} {'seed':>4} {'modes':>7} {'hq':>6} {'w1':>7} {'wall':>7}  "
          f"bar: all modes, hq ≥ {HQ_BAR}")
    for (ds, pair, modes, _, seed), res in zip(todo, results):
        print(run_line(ds, pair, seed, modes, res))
    summary = summarize([(ds, pair, modes, res) for (ds, pair, modes, _, _), res in zip(todo, results)], args.need)
    print(f"\nseeds {' '.join(map(str, args.seeds))}: seeds meeting the bar per pair (mean ± std over seeds)")
    for row in summary:
        errors = f", {row['errors']} failed" if row["errors"] else ""
        print(f"{row['dataset']:8} {row['pair']:11} {row['met']}/{row['n']} meet the bar (need {row['need']}{errors})"
              f"  modes {row['modes_mean']:.1f}/{row['modes']}  hq {row['hq']}  w1 {row['w1']}  "
              f"{'OK' if row['ok'] else 'BELOW'}")
    below = [f"{r['dataset']} {r['pair']}" for r in summary if not r["ok"]]
    print(f"{len(summary) - len(below)}/{len(summary)} pairs meet the bar in enough seeds; run directories under "
          f"{args.out}")
    if children.signum is not None:
        print(f"stopped by {signal.Signals(children.signum).name}: run again with --reuse to resume the stopped runs "
              "and read the finished ones")
        return 128 + children.signum
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
