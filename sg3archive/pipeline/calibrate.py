"""Codec calibration: the W+ codes a new archive's codec model is fitted on, and the fit itself.

The calibration images are read and fitted by :func:`sg3archive.images.load_fitted` and encoded by
:func:`sg3archive.pipeline.encode.encode_latents` (encoder, then refinement when the job asks for
it): the very path compression takes, so the codec is fitted on the latents it will code. Style-mixed
samples of the generator's mapping network (:class:`sg3archive.training.data.SyntheticPairs`) are
added so a small collection still covers W+.
"""

from __future__ import annotations

from typing import Any

import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec.names import AUTO_PROFILE, canonical_coder
from sg3archive.images import ImageRejected, iter_sources, load_fitted, read_bytes
from sg3archive.pipeline.encode import encode_latents
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.training.data import SyntheticPairs

MAPPING_CALIBRATION = 512  # mapping-network W+ samples added to the codec's calibration set
SENSITIVITY_SAMPLES = 64  # calibration codes the per-layer sensitivity of profile "auto" is measured on


def calibration_images(job: CompressJob, resolution: int) -> list[torch.Tensor]:
    """The first ``job.calibration_images`` sources that read and decode, fitted to the
    generator's square (``[3, R, R]`` each); sources that do not are passed over."""
    images: list[torch.Tensor] = []
    if not job.calibration_images:
        return images
    options = job.source_storage_options or None
    for uri in iter_sources(job.source, pattern=job.pattern, storage_options=options):
        try:
            data = read_bytes(uri, options)
            images.append(load_fitted(data, resolution, job.fit, max_pixels=job.max_pixels, uri=uri).tensor)
        except (ImageRejected, OSError, ValueError, MemoryError):
            continue
        if len(images) >= job.calibration_images:
            break
    return images


def calibration_ws(job: CompressJob, models: Any) -> torch.Tensor:
    """W+ codes ``[M, num_ws, w_dim]`` (CPU) to fit the codec on: the collection's calibration
    images through the compress encode path, plus mapping-network samples."""
    parts = []
    images = calibration_images(job, models.resolution)
    if images:
        parts.append(encode_latents(models, torch.stack(images).to(models.device), job).detach().cpu())
    pairs = SyntheticPairs(models.G)
    with torch.no_grad():
        parts.append(pairs.ws(MAPPING_CALIBRATION, torch.Generator().manual_seed(0)).cpu())
    return torch.cat(parts)


def fit_codec(job: CompressJob, models: Any) -> LatentCodec:
    """The codec model of a new archive, fitted on :func:`calibration_ws` per the job's profile and
    coder; profile ``auto`` meets ``job.target_bytes`` per image, its bits weighted by how strongly
    each layer moves the generator's images."""
    ws = calibration_ws(job, models)
    coder = canonical_coder(job.coder)
    if job.profile == AUTO_PROFILE:
        from sg3archive.networks.sensitivity import layer_sensitivity

        weights = layer_sensitivity(models.G, ws[:SENSITIVITY_SAMPLES].to(models.device))
        return LatentCodec.fit(ws, AUTO_PROFILE, coder=coder, target_bytes=job.target_bytes,
                               layer_weights=[float(w) for w in weights])
    return LatentCodec.fit(ws, profile=job.profile, coder=coder)
