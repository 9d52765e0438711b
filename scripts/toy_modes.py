"""Per-mode diagnosis of a ring8 / grid25 run: where G puts its mass, and what the critic tells G there.

    python scripts/toy_modes.py outputs/toy_bar/grid25_ganqp_none_seed2            # last checkpoint
    python scripts/toy_modes.py RUN_DIR --checkpoint best --n 25000 --seed 0

One row per mode (its centre):
- ``mass``: share of G's samples whose nearest centre it is (fair share: 1/modes); ``hq``: how many of them lie
  within 3σ (the mode is *captured* by PacGAN's rule when this is ≥ 1 out of 2,500);
- ``dist``: median distance of those samples to the centre (σ·1.18 ≈ 0.059 for samples of the mode itself);
- ``D real`` / ``D fake``: the critic the loss sees (D̂ under gn / gran, D otherwise) averaged over real samples of
  the mode and over G's samples nearest to it;
- ``|grad|`` and ``cos``: median ‖∇ₓD‖ at those G samples and the median cosine between ∇ₓD and the direction to
  the centre. Every loss moves G's samples along +∇ₓD (higher D = more real), so ``cos`` < 0 pushes them away.

Flags: ``starved`` (mass below a quarter of the fair share), ``off`` (dist above 3σ: the samples sit beside the
mode). Uses the run's own config and the EMA generator when the run kept one, on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ganbench import checkpoint, evaluate
from ganbench.build import build
from ganbench.errors import GanbenchError


def diagnose(run_dir: Path, which: str = "last", n: int = 25_000, seed: int = 0) -> list[dict]:
    """The per-mode rows described in the module docstring."""
    cfg = evaluate.run_config(run_dir)
    path = evaluate.checkpoint_path(run_dir, which)
    r = build(cfg, torch.device("cpu"))
    r.restore(checkpoint.load(path), path)
    centers = getattr(r.dataset, "centers", None)
    if centers is None:
        raise GanbenchError(f"{run_dir} is not a 2D toy run (dataset {cfg.dataset.get('_target_')}).")
    std = float(r.dataset.std)
    G = r.G_ema if r.G_ema is not None else r.G
    D = r.constraint.wrap(r.D.eval())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fake = G.eval()(G.sample_z(n, generator=gen))
    real = centers.repeat_interleave(400, 0)
    real = real + std * torch.randn(real.shape, generator=gen)
    fake.requires_grad_(True)
    d_fake = D(fake)
    grad, = torch.autograd.grad(d_fake.sum(), fake)
    with torch.enable_grad():
        d_real = D(real.requires_grad_(True)).detach().view(len(centers), 400).mean(1)
    fake, d_fake = fake.detach(), d_fake.detach()
    dist, nearest = torch.cdist(fake, centers).min(1)
    rows = []
    for m, c in enumerate(centers):
        mine = nearest == m
        k = int(mine.sum())
        cos = torch.nn.functional.cosine_similarity(grad[mine], c - fake[mine], dim=1) if k else torch.zeros(0)
        rows.append({
            "mode": [round(v, 3) for v in c.tolist()], "mass": k / n, "hq": int((dist[mine] < 3 * std).sum()),
            "dist": dist[mine].median().item() if k else float("nan"),
            "d_real": d_real[m].item(), "d_fake": d_fake[mine].mean().item() if k else float("nan"),
            "grad": grad[mine].norm(dim=1).median().item() if k else float("nan"),
            "cos": cos.median().item() if k else float("nan"),
            "starved": k / n < 0.25 / len(centers), "off": k > 0 and dist[mine].median().item() > 3 * std,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="last", help="last | best | a checkpoint path")
    parser.add_argument("--n", type=int, default=25_000, help="G samples (PacGAN's metrics use 2,500)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = diagnose(args.run_dir, args.checkpoint, args.n, args.seed)
    except GanbenchError as e:
        print(f"toy_modes: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.run_dir} ({args.checkpoint}), {args.n} G samples; fair mass {1 / len(rows):.3f}")
    print(f"{'mode':>14} {'mass':>6} {'hq':>6} {'dist':>6} {'D real':>8} {'D fake':>8} {'|grad|':>7} {'cos':>5}")
    for row in rows:
        flags = " ".join(f for f in ("starved", "off") if row[f])
        print(f"{str(tuple(row['mode'])):>14} {row['mass']:6.4f} {row['hq']:6d} {row['dist']:6.3f} "
              f"{row['d_real']:8.3f} {row['d_fake']:8.3f} {row['grad']:7.3f} {row['cos']:5.2f}  {flags}")
    starved, off = sum(r["starved"] for r in rows), sum(r["off"] for r in rows)
    print(f"{starved} starved, {off} off-centre of {len(rows)} modes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
