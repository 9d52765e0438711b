"""Datasets: uint8 tensors decoded once (and cached), scaled to [-1, 1] on the fly, sampled without a DataLoader.

Every dataset is resident in memory (on the training device after ``.to(device)``) and ``sample(n)`` draws a batch
with replacement from the global torch RNG on that device, so sampling never syncs with the host and is reproducible
under ``torch.manual_seed``. Factories below are the ``_target_`` of ``conf/dataset/*.yaml``.

``Dataset.name`` identifies the data, split and resolution included (``mnist-train-32``, ``folder-cats-1a2b3c4d``),
so it is safe as a key for cached reference statistics.
"""

import hashlib
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets import CIFAR10, MNIST

from ganbench import cachelock, checkpoint, config
from ganbench.errors import GanbenchError

log = logging.getLogger("ganbench")


class Dataset:
    """Base class: a name, the shape of one sample, and an infinite sampler on a device."""

    name: str
    shape: tuple[int, ...]
    is_image: bool

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device) -> "Dataset":
        """Move the resident tensors to ``device`` (in place) and return ``self``."""
        raise NotImplementedError

    def sample(self, n: int) -> torch.Tensor:
        """A float32 batch of ``n`` samples on the dataset's device; images are scaled to [-1, 1]."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, len={len(self)}, device={self.device})"


class ToyDataset(Dataset):
    """An infinite mixture of K isotropic 2D Gaussians with equal weights: ``centers[k] + std * N(0, I)``."""

    is_image = False
    shape = (2,)

    def __init__(self, name: str, centers: torch.Tensor, std: float):
        self.name, self.centers, self.std = name, centers.float(), float(std)

    @property
    def device(self) -> torch.device:
        return self.centers.device

    def to(self, device) -> "ToyDataset":
        self.centers = self.centers.to(device)
        return self

    def sample(self, n: int) -> torch.Tensor:
        k = torch.randint(len(self.centers), (n,), device=self.device)
        return self.centers[k] + self.std * torch.randn(n, 2, device=self.device)

    def __len__(self) -> int:
        return 2**62  # infinite: any sample size is available


class ImageDataset(Dataset):
    """Images kept as uint8 ``(N, C, H, W)`` (also on the GPU); ``sample`` scales them to [-1, 1] per batch."""

    is_image = True

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor | None = None):
        assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
        self.name, self.images, self.labels = name, images, labels
        self.shape = tuple(images.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device) -> "ImageDataset":
        self.images = self.images.to(device)
        self.labels = None if self.labels is None else self.labels.to(device)
        return self

    def sample(self, n: int) -> torch.Tensor:
        idx = torch.randint(len(self.images), (n,), device=self.device)
        return self.images[idx].float().div_(127.5).sub_(1.0)

    def __len__(self) -> int:
        return len(self.images)


# ---------------------------------------------------------------------------------------------------- 2D toys


def ring8(radius: float = 2.0, std: float = 0.02) -> ToyDataset:
    """8 Gaussians evenly spaced on a circle of ``radius`` (first one at angle 0), each with std ``std``."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return ToyDataset("ring8", centers.float(), std)


def grid25(spacing: float = 2.0, std: float = 0.05) -> ToyDataset:
    """25 Gaussians on a 5x5 grid ``{-2, -1, 0, 1, 2}^2 * spacing`` (default {-4,-2,0,2,4}^2), each with std ``std``."""
    axis = torch.arange(-2, 3, dtype=torch.float32) * spacing
    centers = torch.cartesian_prod(axis, axis)
    return ToyDataset("grid25", centers, std)


# ---------------------------------------------------------------------------------------------------- MNIST, CIFAR-10


def _pad_mnist(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 1, R, R): R=28 keeps the digits, R=32 pads 2 pixels of background (0, i.e. -1)."""
    if resolution not in (28, 32):
        raise GanbenchError(f"MNIST resolution {resolution} is not supported: set dataset.resolution to 28 or 32.")
    pad = (resolution - 28) // 2
    return F.pad(images.unsqueeze(1), (pad, pad, pad, pad), value=0)


def _is_train(split: str) -> bool:
    """True for ``train``, False for ``test``; anything else is an error."""
    if split not in ("train", "test"):
        raise GanbenchError(f"Unknown split {split!r}: set dataset.split to train or test.")
    return split == "train"


def mnist_mini(resolution: int = 32, split: str = "train") -> ImageDataset:
    """MNIST digits shipped with ganbench: 10,000 train (1,000 per class) or 1,000 test (100 per class).

    Built by ``scripts/build_mnist_mini.py``; see ``ganbench/assets/MNIST_MINI.md`` (MNIST: CC BY-SA 3.0).
    """
    train = _is_train(split)
    with resources.files("ganbench.assets").joinpath("mnist_mini.npz").open("rb") as f:
        with np.load(io.BytesIO(f.read())) as npz:
            prefix = "" if train else "test_"
            images, labels = npz[prefix + "images"], npz[prefix + "labels"]
    images = _pad_mnist(torch.from_numpy(images), resolution)
    return ImageDataset(f"mnist_mini-{split}-{resolution}", images, torch.from_numpy(labels).long())


def _torchvision(cls, label: str, root: str, download: bool, train: bool):
    """Instantiate a torchvision dataset, turning missing files and failed downloads into one-sentence errors."""
    root = str(Path(root).expanduser())
    try:
        return cls(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        if download:
            raise GanbenchError(
                f"Downloading {label} into {root} failed ({type(e).__name__}): check the internet connection, "
                f"or unpack an image-folder copy and use dataset=folder dataset.root=PATH."
            ) from e
        raise GanbenchError(
            f"{label} not found under {root} and download=false: set dataset.download=true (needs internet), "
            f"or unpack an image-folder copy and use dataset=folder dataset.root=PATH."
        ) from e


def mnist(root: str = "data/mnist", download: bool = False, split: str = "train", resolution: int = 32) -> ImageDataset:
    """Full MNIST via ``torchvision.datasets.MNIST`` (60,000 train / 10,000 test), padded to 32x32 by default."""
    ds = _torchvision(MNIST, "MNIST", root, download, _is_train(split))
    images = _pad_mnist(ds.data.to(torch.uint8), resolution)
    return ImageDataset(f"mnist-{split}-{resolution}", images, ds.targets.long())


def cifar10(root: str = "data/cifar10", download: bool = False, split: str = "train") -> ImageDataset:
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (50,000 train / 10,000 test), 3x32x32."""
    ds = _torchvision(CIFAR10, "CIFAR-10", root, download, _is_train(split))
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageDataset(f"cifar10-{split}", images, torch.tensor(ds.targets, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------- image folders

_BAD_IMAGE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def cache_dir(kind: str) -> Path:
    """``$GANBENCH_CACHE/<kind>`` (default ``~/.cache/ganbench/<kind>``): decoded datasets, reference statistics."""
    return config.cache_root() / kind


def _scan(path: str, recursive: bool) -> list[os.DirEntry]:
    """Visible (not dot-named) files under ``path``, sorted by path; DirEntry keeps the listing to one syscall."""
    files = []
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_file():
                files.append(entry)
            elif recursive and entry.is_dir():
                files += _scan(entry.path, True)
    return sorted(files, key=lambda e: e.path)


def _list_folder(root: Path) -> tuple[list[os.DirEntry], list[int] | None]:
    """Files of an ImageFolder tree (``root/<class>/**``, labels = sorted class index) or of a flat folder."""
    classes = sorted(e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        return _scan(str(root), recursive=False), None
    files, labels = [], []
    for label, class_dir in enumerate(classes):
        found = _scan(class_dir, recursive=True)
        files += found
        labels += [label] * len(found)
    return files, labels


def _decode(path: str, resolution: int, mode: str) -> np.ndarray | None:
    """One file -> uint8 (R, R) or (R, R, 3): center-crop to square, resize with antialiasing; None if unreadable."""
    try:
        with Image.open(path) as im:
            im.draft(mode, (resolution, resolution))  # JPEG: let the decoder downscale large photos cheaply
            im = im.convert(mode)
            w, h = im.size
            s = min(w, h)
            if w != h:
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            if s != resolution:
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except _BAD_IMAGE:
        return None


def folder(root: str, resolution: int = 32, channels: int = 3, max_images: int | None = None) -> ImageDataset:
    """Any folder of images, decoded once and cached; labels from class folders when present.

    Layout: an ImageFolder tree ``root/<class>/**/<file>`` (class index = position in the sorted class names; files
    directly in ``root`` are then ignored) or a flat folder ``root/<file>``. Hidden files and folders are ignored.
    Every other file is decoded with PIL (any format it reads) in a thread pool of ``os.cpu_count()`` workers,
    converted to ``L`` (``channels=1``) or ``RGB`` (``channels=3``), center-cropped to a square and resized to
    ``resolution`` with Lanczos antialiasing (images already at that size are kept as they are).
    ``max_images`` keeps a seeded random subset (seed 0) of that many files, in sorted order.

    Rules: a missing ``root`` or one without files is an error; files that are not readable images (corrupt,
    truncated, text) are skipped and their count is logged as one warning; more than half of them bad is an error.

    The decoded uint8 tensor is cached in ``cache_dir("folders")`` under a hash of the absolute path, the file list
    (names, sizes, mtimes), ``resolution``, ``channels`` and ``max_images``: a changed folder is decoded again.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        what = "is a file, not a folder" if root_path.exists() else "does not exist"
        raise GanbenchError(f"Image folder {root_path} {what}: set dataset.root to a folder of images.")
    if channels not in (1, 3):
        raise GanbenchError(f"dataset.channels={channels} is not supported: set it to 1 (grayscale) or 3 (RGB).")
    files, labels = _list_folder(root_path)
    if max_images is not None and max_images < len(files):
        keep = np.sort(np.random.default_rng(0).choice(len(files), max_images, replace=False))
        files = [files[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
    if not files:
        raise GanbenchError(f"No image files under {root_path}: point dataset.root at a folder of images.")

    stats = [(e.path, st.st_size, st.st_mtime_ns) for e in files for st in [e.stat()]]
    key_src = json.dumps([1, str(root_path), resolution, channels, max_images, stats])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    name = f"folder-{root_path.name}-{key[:8]}"
    cache = cache_dir("folders") / f"{key}.pt"

    def load() -> ImageDataset | None:
        hit = checkpoint.load_cache(cache, "decoded-image", check=lambda h: _is_decoded(h, channels, resolution))
        if hit is None:
            return None
        _warn_bad(hit["n_bad"], len(files), root_path)
        return ImageDataset(name, hit["images"], hit["labels"])

    return cachelock.load_or_build(cache, load, lambda: _decode_folder(files, labels, root_path, channels,
                                                                       resolution, name, cache), "decoded folder")


def _decode_folder(files: list[os.DirEntry], labels: list[int] | None, root_path: Path, channels: int,
                   resolution: int, name: str, cache: Path) -> ImageDataset:
    """Decode ``files`` to a uint8 N×C×R×R tensor and cache it in ``cache``."""
    mode = "L" if channels == 1 else "RGB"
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = list(pool.map(lambda e: _decode(e.path, resolution, mode), files))
    ok = [i for i, a in enumerate(decoded) if a is not None]
    n_bad = len(files) - len(ok)
    if n_bad > len(files) / 2:
        raise GanbenchError(f"{n_bad} of {len(files)} files under {root_path} are not readable images: "
                            f"point dataset.root at a folder of images, or remove the broken files.")
    _warn_bad(n_bad, len(files), root_path)

    images = torch.from_numpy(np.stack([decoded[i] for i in ok]))
    images = images.unsqueeze(1) if channels == 1 else images.permute(0, 3, 1, 2).contiguous()
    label_tensor = None if labels is None else torch.tensor([labels[i] for i in ok], dtype=torch.long)
    try:  # write-then-rename so an interrupted run never leaves a half-written cache file
        checkpoint.save_torch({"images": images, "labels": label_tensor, "n_bad": n_bad}, cache)
    except OSError as e:
        log.warning("could not write the decoded-image cache %s (%s); the folder will be decoded again next time",
                    cache, e)
    return ImageDataset(name, images, label_tensor)


def _is_decoded(hit, channels: int, resolution: int) -> bool:
    """A decoded-folder cache entry of the expected layout (uint8 N×C×R×R images, labels to match, a count)."""
    images, labels = hit["images"], hit["labels"]
    return (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4
            and tuple(images.shape[1:]) == (channels, resolution, resolution) and isinstance(hit["n_bad"], int)
            and (labels is None or (isinstance(labels, torch.Tensor) and len(labels) == len(images))))


def _warn_bad(n_bad: int, n_files: int, root: Path) -> None:
    if n_bad:
        log.warning("skipped %d of %d files under %s that are not readable images", n_bad, n_files, root)
