"""Image metrics for the training loop and `ganbench eval`: ``fd_classifier`` (default), ``prc_classifier``, ``fid``,
``kid``, ``is`` (Inception Score: needs the logits, i.e. torch-fidelity's .pth weights).

:func:`evaluate_images` draws ``num_fake`` images once, quantises them to uint8 exactly like the real images are
stored, and feeds both through each metric's feature net. Reference statistics of the real images (and, for KID,
their features) are cached in ``cache_dir("features")`` under the real dataset's name (split and resolution
included), the feature net's id (architecture, seed, weights sha256) and the image count, so a second evaluation
only pays for the fakes.

Every number comes with its protocol (feature net and weights sha256, real dataset / split / count, fake count,
resize), written next to it in metrics.json, so numbers from different protocols cannot be confused. A metric
that cannot run (no Inception weights offline, no torch-fidelity, no labels for the classifier) is skipped with one
log line, and its protocol entry says why; evaluation never stops training.

Config: ``conf/metrics/default.yaml`` (keys documented there).
"""

from __future__ import annotations

import io
import logging
import time

import torch

from ganbench import cachelock, checkpoint
from ganbench.data import ImageDataset, cache_dir
from ganbench.errors import GanbenchError
from ganbench.metrics import inception
from ganbench.metrics.classifier import default_test_split, feature_net
from ganbench.metrics.frechet import Stats, feature_stats, frechet_distance_stats
from ganbench.metrics.prc import precision_recall
from ganbench.metrics.settings import METRICS

log = logging.getLogger("ganbench")

REAL_SUBSET_SEED = 0
_WARNED: set[str] = set()  # skip reasons already logged as warnings in this process


# ---------------------------------------------------------------------------------------------------- images


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 the way images are stored: round((x + 1) · 127.5); NaN -> 0 (the value -1 maps to)."""
    x = torch.nan_to_num(x.detach().float(), nan=-1.0).clamp(-1, 1)
    return (x.add(1).mul(127.5)).round().to(torch.uint8)


def sample_uint8(sample_fn, n: int, batch: int) -> torch.Tensor:
    """``n`` generated images as uint8 on the CPU, drawn ``batch`` at a time from ``sample_fn``."""
    out, left = [], n
    while left > 0:
        k = min(batch, left)
        out.append(to_uint8(sample_fn(k)).cpu())
        left -= k
    return torch.cat(out)


def real_dataset(dataset: ImageDataset, split: str) -> ImageDataset:
    """The reference images: the training data itself (``train``) or its held-out split (``test``)."""
    if split == "train":
        return dataset
    test = default_test_split(dataset)
    if test is None:
        raise GanbenchError(f"metrics.split=test: no held-out split is known for {dataset.name} here; "
                            f"`ganbench eval` builds it from the run's dataset config, or use metrics.split=train.")
    return test


def real_subset(real: ImageDataset, num_real: int | None) -> torch.Tensor:
    """uint8 images: all of ``real`` (in order), or a seeded random subset of ``num_real`` of them."""
    images = real.images.cpu()
    if num_real is None or num_real >= len(images):
        return images
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(REAL_SUBSET_SEED))[:num_real]
    return images[idx.sort().values]


def _reference(real: ImageDataset, num_real: int | None, key: str, extract, need_features: bool):
    """(Stats, features or None) of the real images for feature net ``key``; cached on disk."""
    n = len(real) if num_real is None else min(num_real, len(real))
    path = cache_dir("features") / f"ref-{real.name}-{key}-n{n}.pt"

    def load():
        hit = checkpoint.load_cache(path, "reference-statistics", check=_is_reference)
        return (Stats.from_dict(hit), hit.get("features")) if hit is not None and (
            not need_features or "features" in hit) else None

    return cachelock.load_or_build(path, load, lambda: _build_reference(real, num_real, path, extract, need_features),
                                   "reference statistics")


def _build_reference(real: ImageDataset, num_real: int | None, path, extract, need_features: bool):
    feats = extract(real_subset(real, num_real))
    stats = feature_stats(feats)
    record = stats.to_dict()
    if need_features:
        record["features"] = feats
    try:
        buffer = io.BytesIO()
        torch.save(record, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))
    except OSError as e:
        log.warning("could not cache the reference statistics in %s (%s)", path, e)
    return stats, feats


def _is_reference(hit) -> bool:
    """Cached reference statistics: a finite mean and a square covariance of the same width (features optional)."""
    stats = Stats.from_dict(hit)
    d = stats.mu.shape[-1]
    finite = bool(torch.isfinite(stats.mu).all() and torch.isfinite(stats.sigma).all())
    ok = stats.mu.ndim == 1 and stats.sigma.shape == (d, d) and finite
    return ok and ("features" not in hit or hit["features"].shape[-1] == d)


def _real_protocol(real: ImageDataset, split: str, num_real: int | None, num_fake: int) -> dict:
    n = len(real) if num_real is None else min(num_real, len(real))
    subset = "all" if n == len(real) else f"random subset, seed {REAL_SUBSET_SEED}"
    return {"real": real.name, "real_split": split, "num_real": n, "real_subset": subset, "num_fake": num_fake,
            "fake_quantization": "uint8, round((x+1)*127.5)"}


# ---------------------------------------------------------------------------------------------------- metrics


def _classifier(fake, dataset, real, names, mcfg, device) -> tuple[dict, dict]:
    """fd_classifier and/or prc_classifier: both on the penultimate features of the dataset's own classifier."""
    net = feature_net(dataset, int(mcfg.classifier_seed))
    extract = lambda images: net.features(images, device, int(mcfg.batch))  # noqa: E731
    ref, ref_feats = _reference(real, mcfg.num_real, net.key, extract, need_features="prc_classifier" in names)
    fake_feats = extract(fake)
    base = {"feature_net": f"{net.name} trained on {net.dataset}, seed {net.seed}",
            "weights_sha256": net.sha256[:12], "feature_net_test_accuracy": net.test_accuracy,
            **_real_protocol(real, mcfg.split, mcfg.num_real, len(fake)),
            "resize": f"none ({'x'.join(str(s) for s in dataset.shape[1:])} input)"}
    values, protocol = {}, {}
    if "fd_classifier" in names:
        values["fd_classifier"] = frechet_distance_stats(feature_stats(fake_feats), ref)
        protocol["fd_classifier"] = {**base, "note": "Frechet distance in a small CNN's feature space; not FID, "
                                                     "not comparable with FID"}
    if "prc_classifier" in names:
        values["precision_classifier"], values["recall_classifier"] = precision_recall(ref_feats, fake_feats, k=3)
        protocol["prc_classifier"] = {**base, "k": 3, "method": "improved precision/recall, Kynkaanniemi et al. "
                                      "2019 (arXiv 1904.06991), in the classifier's feature space (the paper uses "
                                      "VGG-16): not comparable with published values"}
    return values, protocol


def _inception(fake, real, names, mcfg, device) -> tuple[dict, dict]:
    weights = inception.resolve_weights(mcfg.inception_weights, bool(mcfg.inception_download))
    net = inception.InceptionFeatures(weights, device)
    batch = min(int(mcfg.batch), 100)  # 100 × 3 × 299² floats per forward pass is plenty
    extract = lambda images: net.features(images, batch)  # noqa: E731
    values, protocol = {}, {}
    fake_feats, fake_logits = net.features_and_logits(fake, batch)
    base = {"feature_net": f"{inception.FEATURE_NET} from {net.source}", "weights_sha256": net.sha256[:12],
            **_real_protocol(real, mcfg.split, mcfg.num_real, len(fake)), "resize": inception.RESIZE}
    if "is" in names:
        values["is"], values["is_std"] = inception.inception_score(fake_logits)
        protocol["is"] = {"feature_net": base["feature_net"].replace("pool3 2048-d", "1008 logits"),
                          "weights_sha256": base["weights_sha256"], "num_fake": len(fake), "resize": base["resize"],
                          "is_splits": inception.IS_SPLITS, "is_seed": inception.IS_SEED,
                          "fake_quantization": base["fake_quantization"]}
    if not any(n in names for n in ("fid", "kid")):
        return values, protocol
    ref, ref_feats = _reference(real, mcfg.num_real, net.key, extract, need_features="kid" in names)
    if "fid" in names:
        values["fid"] = frechet_distance_stats(feature_stats(fake_feats), ref)
        protocol["fid"] = dict(base)
    if "kid" in names:
        mean, std, size = inception.kid(ref_feats, fake_feats)
        values["kid"], values["kid_std"] = mean, std
        protocol["kid"] = {**base, "kid_subsets": inception.KID_SUBSETS, "kid_subset_size": size,
                           "kid_kernel": "polynomial, degree 3, gamma 1/2048, coef0 1 (torch-fidelity defaults)",
                           "kid_seed": inception.KID_SEED}
    return values, protocol


def evaluate_images(sample_fn, dataset, mcfg, device, real: ImageDataset | None = None) -> tuple[dict, dict]:
    """Compute the metrics of ``mcfg.names`` for the generator behind ``sample_fn``; return (metrics, protocol).

    ``sample_fn(n)`` returns ``(n, C, H, W)`` floats in [-1, 1] on ``device`` (already no_grad, EMA-aware).
    ``dataset`` is the training dataset (the fd_classifier feature net is trained on it, labels needed); ``real``
    overrides the reference images (default: ``dataset`` for ``split: train``, its held-out split for ``test``).
    Metrics that cannot run are skipped with one log line each and a ``{"skipped": reason}`` protocol entry.
    """
    if not getattr(dataset, "is_image", False):
        return {}, {}
    device = torch.device(device)
    names = [n for n in mcfg.names if n in METRICS]
    for n in mcfg.names:
        if n not in METRICS:
            log.warning("metric %s skipped: unknown (choose from %s)", n, ", ".join(METRICS))
    metrics: dict[str, float] = {}
    protocol: dict[str, dict] = {}
    skip = _Skip(protocol)
    try:
        real = real if real is not None else real_dataset(dataset, mcfg.split)
    except Exception as e:
        skip(names, e)
        return metrics, protocol

    # Which families can run, decided before any image is generated.
    inception_names = _inception_runnable(names, mcfg, skip)
    classifier_names = [n for n in names if n in ("fd_classifier", "prc_classifier")]
    if not classifier_names and not inception_names:
        return metrics, protocol

    t0 = time.perf_counter()
    fake = sample_uint8(sample_fn, int(mcfg.num_fake), int(mcfg.batch))
    log.debug("sampled %d images in %.1f s", len(fake), time.perf_counter() - t0)
    for family, compute in ((classifier_names, lambda: _classifier(fake, dataset, real, classifier_names, mcfg,
                                                                   device)),
                            (inception_names, lambda: _inception(fake, real, inception_names, mcfg, device))):
        if not family:
            continue
        t0 = time.perf_counter()
        try:
            values, proto = compute()
        except Exception as e:
            skip(family, e)
            continue
        metrics.update(values)
        protocol.update(proto)
        log.debug("%s in %.1f s", "/".join(family), time.perf_counter() - t0)
    return metrics, protocol


class _Skip:
    """Records metrics that cannot run: a ``{"skipped": reason}`` protocol entry each, one warning per reason."""

    def __init__(self, protocol: dict):
        self.protocol = protocol

    def __call__(self, metric_names: list[str], e: Exception) -> None:
        reason = str(e) if isinstance(e, GanbenchError) else f"{type(e).__name__}: {e}"
        # one warning per reason and process: a run evaluating every eval_every steps does not repeat it
        level = logging.DEBUG if reason in _WARNED else logging.WARNING
        _WARNED.add(reason)
        log.log(level, "%s skipped: %s", "/".join(metric_names), reason)
        for n in metric_names:
            self.protocol[n] = {"skipped": reason}


def _inception_runnable(names: list[str], mcfg, skip: _Skip) -> list[str]:
    """The Inception metrics asked for that can run here (torch-fidelity and weights present; IS needs logits)."""
    inception_names = [n for n in names if n in ("fid", "kid", "is")]
    if not inception_names:
        return []
    try:
        inception._require_fidelity()
        weights = inception.resolve_weights(mcfg.inception_weights, bool(mcfg.inception_download))
    except Exception as e:
        skip(inception_names, e)
        return []
    if "is" in inception_names and inception.is_torchscript(weights):
        skip(["is"], inception.WeightsUnavailable(
            f"Inception Score needs the classifier logits, which {weights.name} (TorchScript, pool features "
            f"only) does not have; use torch-fidelity's {inception.FIDELITY_FILE} (downloaded when online, "
            f"or metrics.inception_weights=PATH)."))
        inception_names.remove("is")
    return inception_names
