"""``fd_classifier``: the Fréchet distance in the feature space of a small CNN trained on the dataset's own labels.

What it is: a cheap, CPU-friendly FID-like number for small labelled datasets (mnist_mini by default), in the spirit
of the "FID with a domain classifier" used for MNIST GANs (e.g. the LeNet-feature FD of Binkowski et al. 2018,
arXiv 1801.01401, and of the PyTorch-GAN-zoo MNIST evaluations). What it is NOT: FID. FID means the TF-Inception
network of Heusel et al. (``ganbench/metrics/inception.py``); numbers of the two are on different scales and must
never be compared or called by each other's name.

Feature net (:class:`SmallCNN`): three blocks ``conv3×3 → BatchNorm → ReLU → maxpool 2`` (16, 32, 64 channels),
then ``Linear(·, 128)`` — the **128-d penultimate layer, taken before its ReLU**, is the feature vector (dense,
roughly Gaussian, full rank) — then ReLU → dropout 0.3 → ``Linear(128, classes)``. Training recipe: Adam with a
one-cycle learning rate (peak 4e-3), batch 128, 3 epochs (capped at 5,000 steps for large datasets), each batch
shifted by a random (dx, dy) ∈ [-2, 2]² pixels (circularly; background is 0 at the borders of padded digits),
cross-entropy. It runs on the CPU on **one thread** under ``torch.manual_seed(seed)``: the result does not depend on
the machine's core count, and one thread is also the fastest on a busy small machine. On mnist_mini (10k digits) it
takes about 15-40 s on 2 shared cores and reaches ≈ 98.5 % accuracy on the 1,000 held-out test digits.

Cache: ``cache_dir("features")/<dataset.name>-<arch hash>-seed<k>.pt`` (state dict, loaded with
``weights_only=True``) plus a ``.json`` next to it with the test accuracy and the weights' sha256. The arch hash
covers the architecture, input shape, class count and training recipe, so changing any of them retrains.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ganbench import cachelock, checkpoint
from ganbench.data import ImageDataset, cache_dir, mnist_mini
from ganbench.errors import GanbenchError
from ganbench.metrics.frechet import one_cpu_thread

log = logging.getLogger("ganbench")

FORMAT = "ganbench-fd-classifier-1"
# The training recipe; every value is part of the arch hash (change one -> a new cache file).
RECIPE = {"version": 1, "width": 16, "feature_dim": 128, "dropout": 0.3, "epochs": 3, "max_steps": 5000,
          "batch": 128, "lr": 4e-3, "schedule": "onecycle", "shift": 2, "threads": 1}


class SmallCNN(nn.Module):
    """3 × (conv3×3 → BN → ReLU → maxpool2) → Linear(feature_dim) [features] → ReLU → dropout → Linear(classes)."""

    def __init__(self, in_shape, num_classes: int, width: int = 16, feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()
        c, h, w = (int(s) for s in in_shape)
        if h < 8 or w < 8:
            raise GanbenchError(f"fd_classifier needs images of at least 8×8 pixels, got {h}×{w}.")
        layers, c_in = [], c
        for c_out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c_out
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * (h // 8) * (w // 8), feature_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim): the penultimate layer before its ReLU; ``x`` is float in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], exactly as ``ImageDataset.sample`` scales them."""
    return images.float().div_(127.5).sub_(1.0)


def spec_of(dataset: ImageDataset) -> dict:
    """Everything that determines the trained net besides the data and the seed."""
    return {"net": "SmallCNN", **RECIPE, "in_shape": list(dataset.shape), "classes": _num_classes(dataset)}


def arch_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]


def weights_sha256(state_dict: dict) -> str:
    """sha256 of the weights themselves (names, dtypes, shapes, values), independent of the file's zip layout."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _num_classes(dataset: ImageDataset) -> int:
    if dataset.labels is None:
        raise GanbenchError(f"fd_classifier trains its feature net on class labels, and {dataset.name} has none "
                            f"(a flat folder?): put the images in class sub-folders, or use metrics.names=[fid].")
    return int(dataset.labels.max()) + 1


def default_test_split(dataset: ImageDataset) -> ImageDataset | None:
    """The held-out split that goes with ``dataset`` when it needs no path: mnist_mini's 1,000 test digits."""
    m = re.fullmatch(r"mnist_mini-train-(\d+)", dataset.name)
    return mnist_mini(int(m.group(1)), split="test") if m else None


def cache_path(dataset: ImageDataset, seed: int) -> Path:
    return cache_dir("features") / f"{dataset.name}-{arch_hash(spec_of(dataset))}-seed{seed}.pt"


@dataclass
class FeatureNet:
    """A trained :class:`SmallCNN` and what identifies it in a metric's protocol."""

    net: SmallCNN
    dataset: str
    seed: int
    arch: str
    sha256: str
    test_accuracy: float | None
    path: Path

    @property
    def name(self) -> str:
        return f"SmallCNN-{self.arch} (fd_classifier, {RECIPE['feature_dim']}-d penultimate layer)"

    @property
    def key(self) -> str:
        """Short id for cache keys of reference statistics."""
        return f"fdc-{self.arch}-s{self.seed}-{self.sha256[:8]}"

    def features(self, images: torch.Tensor, device: torch.device | str = "cpu", batch: int = 500) -> torch.Tensor:
        """(N, 128) float32 CPU features of uint8 images (N, C, H, W)."""
        device = torch.device(device)
        if images.dtype != torch.uint8:
            raise GanbenchError(f"fd_classifier features take uint8 images, got {images.dtype}.")
        self.net.to(device).eval()
        out = []
        with torch.no_grad(), one_cpu_thread() if device.type == "cpu" else _nullcontext():
            for chunk in images.split(batch):
                out.append(self.net.features(_to_float(chunk.to(device))).float().cpu())
        return torch.cat(out)


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def accuracy(net: SmallCNN, dataset: ImageDataset, batch: int = 1000) -> float:
    net.eval()
    correct = 0
    with torch.no_grad(), one_cpu_thread():
        for x, y in zip(dataset.images.cpu().split(batch), dataset.labels.cpu().split(batch), strict=True):
            correct += int((net(_to_float(x)).argmax(1) == y).sum())
    return correct / len(dataset)


def train(dataset: ImageDataset, seed: int = 0) -> SmallCNN:
    """Train the feature net on ``dataset``'s images and labels (CPU, one thread, seeded; see the module doc)."""
    spec = spec_of(dataset)
    images, labels = dataset.images.cpu(), dataset.labels.cpu()
    n, b = len(images), RECIPE["batch"]
    if n < b:
        raise GanbenchError(f"fd_classifier needs at least {b} labelled images to train on; {dataset.name} has {n}.")
    steps_per_epoch = n // b
    total = min(RECIPE["epochs"] * steps_per_epoch, RECIPE["max_steps"])
    s = RECIPE["shift"]
    with torch.random.fork_rng(devices=[]), one_cpu_thread():  # never moves the caller's RNG streams
        torch.manual_seed(seed)
        net = SmallCNN(dataset.shape, spec["classes"], RECIPE["width"], RECIPE["feature_dim"], RECIPE["dropout"])
        opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=total)
        net.train()
        step = 0
        while step < total:
            perm = torch.randperm(n)
            for i in range(min(steps_per_epoch, total - step)):
                idx = perm[i * b:(i + 1) * b]
                dy, dx = torch.randint(-s, s + 1, (2,)).tolist()
                x = torch.roll(_to_float(images[idx]), (dy, dx), dims=(2, 3))
                loss = F.cross_entropy(net(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
    return net.eval()


def _save(path: Path, net: SmallCNN, spec: dict, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "spec": json.dumps(spec, sort_keys=True), "state_dict": net.state_dict(),
                "test_accuracy": info["test_accuracy"]}, buffer)
    checkpoint.atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    text = json.dumps(info, indent=2).encode()
    checkpoint.atomic_write_bytes(path.with_suffix(".json"), lambda f: f.write(text))


def _is_feature_net(state, spec: dict) -> bool:
    """A cached feature net of this architecture (format tag, spec and the state dict's shapes)."""
    if state.get("format") != FORMAT or json.loads(state["spec"]) != spec:
        return False
    net = SmallCNN(spec["in_shape"], spec["classes"], RECIPE["width"], RECIPE["feature_dim"], RECIPE["dropout"])
    net.load_state_dict(state["state_dict"])  # a mismatch raises: load_cache counts that as damage
    return True


def _load(state: dict, path: Path, dataset: ImageDataset, seed: int) -> FeatureNet:
    spec = spec_of(dataset)
    net = SmallCNN(dataset.shape, spec["classes"], RECIPE["width"], RECIPE["feature_dim"], RECIPE["dropout"])
    net.load_state_dict(state["state_dict"])
    acc = state.get("test_accuracy")
    return FeatureNet(net.eval(), dataset.name, seed, arch_hash(spec), weights_sha256(net.state_dict()),
                      None if acc is None else float(acc), path)


def feature_net(dataset: ImageDataset, seed: int = 0, test: ImageDataset | None = None,
                retrain: bool = False) -> FeatureNet:
    """The cached feature net for ``dataset`` and ``seed``; trained (and cached) on first use.

    ``test`` is the held-out split its accuracy is measured on (default: :func:`default_test_split`; none -> the
    accuracy is recorded as null). A cache file that cannot be read is ignored and rebuilt.
    """
    path = cache_path(dataset, seed)
    spec = spec_of(dataset)
    if retrain:
        with cachelock.exclusive(path, "fd_classifier feature net"):
            return _train_and_cache(dataset, seed, test, path, spec)

    def load() -> FeatureNet | None:
        state = checkpoint.load_cache(path, "fd_classifier feature-net", check=lambda s: _is_feature_net(s, spec))
        return None if state is None else _load(state, path, dataset, seed)

    return cachelock.load_or_build(path, load, lambda: _train_and_cache(dataset, seed, test, path, spec),
                                   "fd_classifier feature net")


def _train_and_cache(dataset: ImageDataset, seed: int, test: ImageDataset | None, path: Path,
                     spec: dict) -> FeatureNet:
    test = test if test is not None else default_test_split(dataset)
    log.info("training the fd_classifier feature net on %s (once; cached in %s)", dataset.name, path)
    t0 = time.perf_counter()
    net = train(dataset, seed)
    seconds = time.perf_counter() - t0
    test_acc = accuracy(net, test) if test is not None and test.labels is not None else None
    sha = weights_sha256(net.state_dict())
    info = {"dataset": dataset.name, "seed": seed, "arch": arch_hash(spec), "spec": spec, "weights_sha256": sha,
            "test_split": test.name if test_acc is not None else None, "test_accuracy": test_acc,
            "train_accuracy": accuracy(net, dataset), "train_seconds": round(seconds, 1), "torch": torch.__version__}
    try:
        _save(path, net, spec, info)
    except OSError as e:
        log.warning("could not write the feature-net cache %s (%s); it will be trained again next time", path, e)
    acc_text = (f"test accuracy {test_acc:.2%} on {test.name}" if test_acc is not None
                else f"train accuracy {info['train_accuracy']:.2%} (no held-out split to test on)")
    log.info("fd_classifier feature net trained in %.1f s: %s", seconds, acc_text)
    return FeatureNet(net, dataset.name, seed, arch_hash(spec), sha, test_acc, path)
