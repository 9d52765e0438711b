"""Datasets: packaged MNIST subset, 2D toys, image folders (tiny ones made here), torchvision error messages."""

import logging
from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf
from PIL import Image

from ganbench import data
from ganbench.errors import GanbenchError

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Keep decoded-folder caches out of the user's home."""
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "cache"))


def save(path: Path, size=(8, 8), color=(255, 0, 0), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


# ---------------------------------------------------------------------------------------------------- mnist_mini


def test_mnist_mini():
    ds = data.mnist_mini()
    assert len(ds) == 10000 and ds.shape == (1, 32, 32) and ds.is_image
    assert ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    torch.manual_seed(0)
    x = ds.sample(512)
    assert x.dtype == torch.float32 and x.shape == (512, 1, 32, 32)
    assert x.min() == -1 and x.max() == 1
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (x[:, :, border] == -1).all()
    assert (ds.images[:, :, border] == 0).all()


def test_mnist_mini_28_and_test_split():
    assert data.mnist_mini(resolution=28).shape == (1, 28, 28)
    test = data.mnist_mini(split="test")
    assert len(test) == 1000 and torch.bincount(test.labels).tolist() == [100] * 10
    with pytest.raises(GanbenchError, match="resolution"):
        data.mnist_mini(resolution=64)


# ---------------------------------------------------------------------------------------------------- 2D toys


def test_toy_centres():
    ring = data.ring8()
    angles = torch.arange(8) * (torch.pi / 4)
    torch.testing.assert_close(ring.centers, 2.0 * torch.stack([angles.cos(), angles.sin()], 1))
    grid = data.grid25()
    assert sorted(map(tuple, grid.centers.tolist())) == [(float(a), float(b)) for a in range(-4, 5, 2)
                                                         for b in range(-4, 5, 2)]
    assert ring.shape == grid.shape == (2,) and not ring.is_image


@pytest.mark.parametrize("factory", [data.ring8, data.grid25])
def test_toy_samples_near_centres_and_deterministic(factory):
    ds = factory()
    torch.manual_seed(1)
    x = ds.sample(4096)
    assert x.shape == (4096, 2) and x.dtype == torch.float32
    dist = torch.cdist(x, ds.centers).min(dim=1).values
    assert (dist < 6 * ds.std).all()
    assert len(torch.cdist(x, ds.centers).argmin(1).unique()) == len(ds.centers)  # every mode drawn
    torch.manual_seed(1)
    torch.testing.assert_close(ds.sample(4096), x)


# ---------------------------------------------------------------------------------------------------- folders


def test_folder_class_tree_and_bad_files(tmp_path, caplog):
    root = tmp_path / "imgs"
    for i in range(3):
        save(root / "a_cls" / f"{i}.png", color=(255, 0, 0))
        save(root / "b_cls" / f"{i}.jpg", color=(0, 0, 255))
    truncated = save(root / "b_cls" / "broken.png", size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:60])
    (root / "a_cls" / "notes.txt").write_text("not an image")
    (root / "a_cls" / ".hidden.png").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="ganbench"):
        ds = data.folder(str(root), resolution=8)
    assert len(ds) == 6 and ds.shape == (3, 8, 8) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"skipped 2 of 8 files under {root} that are not readable images"]
    assert ds.images[0, :, 0, 0].tolist() == [255, 0, 0]
    x = ds.sample(16)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1


def test_folder_flat_resize_crop_grayscale(tmp_path):
    # 30x10: red | green | blue thirds; the centre square is the green third.
    flat = tmp_path / "flat"
    strip = np.zeros((10, 30, 3), np.uint8)
    strip[:, :10, 0] = strip[:, 10:20, 1] = strip[:, 20:, 2] = 255
    flat.mkdir()
    Image.fromarray(strip).save(flat / "strip.png")
    save(flat / "big.png", size=(64, 64), color=(0, 255, 0))
    rgb = data.folder(str(flat), resolution=4)
    assert rgb.labels is None and rgb.images.shape == (2, 3, 4, 4)
    assert (rgb.images[:, 1] == 255).all() and (rgb.images[:, [0, 2]] == 0).all()
    gray = data.folder(str(flat), resolution=4, channels=1)
    assert gray.images.shape == (2, 1, 4, 4)
    assert (gray.images == round(0.587 * 255)).all()  # PIL's ITU-R 601-2 luma of pure green


def test_folder_errors(tmp_path):
    with pytest.raises(GanbenchError, match="does not exist"):
        data.folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GanbenchError, match="No image files"):
        data.folder(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    save(bad / "ok.png")
    for i in range(2):
        (bad / f"{i}.txt").write_text("text")
    with pytest.raises(GanbenchError, match="2 of 3 files"):
        data.folder(str(bad))


def test_folder_cache_hit(tmp_path, monkeypatch):
    for i in range(4):
        save(tmp_path / "imgs" / f"{i}.png", color=(60 * i, 0, 0))
    first = data.folder(str(tmp_path / "imgs"), resolution=8)
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 1

    def no_decode(*args):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode", no_decode)
    second = data.folder(str(tmp_path / "imgs"), resolution=8)
    assert second.name == first.name
    torch.testing.assert_close(second.images, first.images)
    with pytest.raises(AssertionError, match="decoded again"):  # another resolution is another cache entry
        data.folder(str(tmp_path / "imgs"), resolution=4)


def test_folder_max_images(tmp_path):
    for i in range(10):
        save(tmp_path / "imgs" / f"{i}.png")
    assert len(data.folder(str(tmp_path / "imgs"), resolution=8, max_images=3)) == 3


# ---------------------------------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize("factory, label", [(data.mnist, "MNIST"), (data.cifar10, "CIFAR-10")])
def test_torchvision_missing_is_one_sentence(tmp_path, factory, label):
    with pytest.raises(GanbenchError) as err:
        factory(root=str(tmp_path), download=False)
    msg = str(err.value)
    assert msg.startswith(f"{label} not found under {tmp_path}") and "dataset.download=true" in msg
    assert "dataset=folder" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("name", ["ring8", "grid25", "mnist_mini", "folder"])
def test_yaml_instantiates(name, tmp_path):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    if name == "folder":
        assert OmegaConf.is_missing(cfg, "root")
        cfg.root = str(save(tmp_path / "imgs" / "0.png").parent)
    ds = hydra.utils.instantiate(cfg)
    assert isinstance(ds, data.Dataset) and ds.sample(4).shape == (4, *ds.shape)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_yaml_torchvision_offline(name, tmp_path):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.download is False
    cfg.root = str(tmp_path)
    with pytest.raises(InstantiationException) as err:  # Hydra wraps the error; the CLI unwraps __cause__
        hydra.utils.instantiate(cfg)
    assert isinstance(err.value.__cause__, GanbenchError) and "not found" in str(err.value.__cause__)
