"""FID of two image folders by ganbench, torch-fidelity and pytorch-fid, with the same Inception weights.

The three use the same TF-FID Inception network (``inception-2015-12-05``). ganbench and torch-fidelity resize to
299×299 with TensorFlow 1.x bilinear interpolation on uint8 values; pytorch-fid converts to [0, 1] floats and
resizes with ``F.interpolate(mode="bilinear", align_corners=False)``, which differs from TF1's resize, so its FID
differs. This script measures that gap instead of hiding it. Usage:

    pip install --no-deps pytorch-fid        # optional third column (its own weights download is bypassed)
    python scripts/fid_gap.py DIR_A DIR_B [--n 500] [--weights default_1.pt] [--device cpu]

Every folder image is decoded by each library its own way (all three convert to RGB); ``--n`` keeps n evenly
spaced files of each folder in sorted order (so every class of an ImageFolder tree), copied to a temporary folder so
that all three read the same files.
Prints one line per library and the relative gaps. Inception costs 0.1–0.5 s per image on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganbench.metrics import inception
from ganbench.metrics.frechet import feature_stats, frechet_distance_stats

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def first_files(root: Path, n: int | None) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))
    if not files:
        sys.exit(f"error: no images under {root}")
    if not n or n >= len(files):
        return files
    return [files[i * len(files) // n] for i in range(n)]  # evenly spaced: every class of an ImageFolder tree


def stage(files: list[Path], dest: Path) -> Path:
    """The files as a flat folder (numbered names keep the order); what all three libraries read."""
    dest.mkdir(parents=True)
    for i, f in enumerate(files):
        os.symlink(f.resolve(), dest / f"{i:06d}{f.suffix.lower()}")
    return dest


def load_uint8(folder: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in sorted(folder.iterdir())]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def ganbench_fid(a: Path, b: Path, net: inception.InceptionFeatures) -> float:
    fa, fb = (net.features(load_uint8(d)) for d in (a, b))
    return frechet_distance_stats(feature_stats(fa), feature_stats(fb))


def fidelity_fid(a: Path, b: Path, weights: Path, device: str) -> float:
    import torch_fidelity

    return torch_fidelity.calculate_metrics(
        input1=str(a), input2=str(b), fid=True, cuda=device.startswith("cuda"), cache=False, verbose=False,
        feature_extractor_weights_path=str(weights), batch_size=50)["frechet_inception_distance"]


def pytorch_fid_fid(a: Path, b: Path, state_dict: dict, device: str) -> float:
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pf_inception

    # pytorch-fid downloads pt_inception-2015-12-05-6726825d.pth: the same network and key names as torch-fidelity's
    pf_inception.load_state_dict_from_url = lambda *args, **kwargs: state_dict
    return float(fid_score.calculate_fid_given_paths([str(a), str(b)], 50, device, 2048, num_workers=0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--n", type=int, default=500, help="N evenly spaced images of each folder (0: all)")
    p.add_argument("--weights", default=None, help="Inception weights (default: ganbench's lookup, see "
                                                   "ganbench/metrics/inception.py)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    weights = inception.resolve_weights(args.weights, download=True)
    net = inception.InceptionFeatures(weights, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        a = stage(first_files(args.a, args.n or None), Path(tmp) / "a")
        b = stage(first_files(args.b, args.n or None), Path(tmp) / "b")
        fidelity_weights = inception.fidelity_weights_file(net, Path(tmp))  # the other two libraries' layout
        state = torch.load(fidelity_weights, map_location="cpu", weights_only=True)
        print(f"{len(list(a.iterdir()))} vs {len(list(b.iterdir()))} images; weights {weights.name} "
              f"({net.source}); device {args.device}")
        results = {}
        for name, fn in (("ganbench", lambda: ganbench_fid(a, b, net)),
                         ("torch-fidelity", lambda: fidelity_fid(a, b, fidelity_weights, args.device)),
                         ("pytorch-fid", lambda: pytorch_fid_fid(a, b, state, args.device))):
            t0 = time.perf_counter()
            try:
                results[name] = fn()
            except ImportError as e:
                print(f"{name:15s} not installed ({e.name}); pip install --no-deps {name}")
                continue
            print(f"{name:15s} FID {results[name]:.6f}   ({time.perf_counter() - t0:.1f} s)")
        for name in ("torch-fidelity", "pytorch-fid"):
            if name in results and "ganbench" in results:
                rel = (results[name] - results["ganbench"]) / results["ganbench"]
                print(f"{name} - ganbench: {results[name] - results['ganbench']:+.6f} ({rel:+.2e} relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
