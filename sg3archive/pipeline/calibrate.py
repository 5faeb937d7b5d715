"""Codec calibration: the W+ codes a new archive's codec model is fitted on, and the fit itself.

The calibration images are read and fitted by :func:`sg3archive.images.load_fitted` and encoded by
:func:`sg3archive.pipeline.encode.encode_latents` without a codec: the encoder's latents, the
starting point of every compressed image (refinement, when the job asks for it, then optimizes
each latent for this fitted codec's rate and quantization). Style-mixed
samples of the generator's mapping network (:class:`sg3archive.training.data.SyntheticPairs`) are
added so a small collection still covers W+.

Profile ``matched`` (the default) chooses the bits per layer on an evaluation set of those
calibration images (:mod:`sg3archive.pipeline.rate_control`): the cheapest allocation whose
quantized reconstruction loses at most ``job.max_quantization_loss`` dB (0.1 by default) of mean
PSNR against the encoder's own reconstruction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec.names import AUTO_PROFILE, MATCHED_PROFILE, canonical_coder
from sg3archive.images import ImageRejected, iter_sources, load_fitted, read_bytes
from sg3archive.pipeline.encode import encode_latents
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.rate_control import (
    MAX_EVAL_IMAGES,
    MIN_EVAL_IMAGES,
    RateChoice,
    choose_bits,
)
from sg3archive.training.data import SyntheticPairs

MAPPING_CALIBRATION = 512  # mapping-network W+ samples added to the codec's calibration set
SENSITIVITY_SAMPLES = 64  # calibration codes the per-layer sensitivity of profile "auto" is measured on
MAPPING_SEED, EVAL_TOP_UP_SEED = 0, 1  # seeds of the mapping samples and of the evaluation top-up images


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


def _encode(job: CompressJob, models: Any, images: list[torch.Tensor]) -> torch.Tensor:
    """W+ (CPU) of images through the compress encode path."""
    return encode_latents(models, torch.stack(images).to(models.device), job).detach().cpu()


def _mapping_ws(models: Any) -> torch.Tensor:
    with torch.no_grad():
        return SyntheticPairs(models.G).ws(MAPPING_CALIBRATION, torch.Generator().manual_seed(MAPPING_SEED)).cpu()


def calibration_ws(job: CompressJob, models: Any) -> torch.Tensor:
    """W+ codes ``[M, num_ws, w_dim]`` (CPU) to fit the codec on: the collection's calibration
    images through the compress encode path, plus mapping-network samples."""
    images = calibration_images(job, models.resolution)
    parts = [_encode(job, models, images)] if images else []
    return torch.cat([*parts, _mapping_ws(models)])


def evaluation_set(job: CompressJob, models: Any, images: list[torch.Tensor],
                   encoded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 3, R, R], ws [N, num_ws, w_dim])`` (CPU) that rate control measures on: the first
    :data:`~sg3archive.pipeline.rate_control.MAX_EVAL_IMAGES` calibration images with their codes,
    topped up to :data:`~sg3archive.pipeline.rate_control.MIN_EVAL_IMAGES` with generator images of
    mapping samples (seeded), encoded as collection images are."""
    count = min(len(images), MAX_EVAL_IMAGES)
    x = [im.cpu() for im in images[:count]]
    ws = [encoded[:count]] if encoded is not None and count else []
    missing = MIN_EVAL_IMAGES - count
    if missing > 0:
        pairs = SyntheticPairs(models.G, synth_batch=job.batch_size)
        with torch.no_grad():
            generated = pairs.images(pairs.ws(missing, torch.Generator().manual_seed(EVAL_TOP_UP_SEED))).cpu()
        x.extend(generated)
        ws.append(_encode(job, models, list(generated)))
    return torch.stack(x), torch.cat(ws)


def choose_matched_bits(job: CompressJob, models: Any, images: list[torch.Tensor], encoded: torch.Tensor | None,
                        ws: torch.Tensor) -> RateChoice:
    """Rate control of profile ``matched`` on :func:`evaluation_set`; candidates fitted on ``ws``."""
    x_eval, ws_eval = evaluation_set(job, models, images, encoded)
    max_loss = job.max_quantization_loss
    return choose_bits(models.G, ws, ws_eval, x_eval, max_loss_db=max_loss, batch_size=job.batch_size)


def fit_codec(job: CompressJob, models: Any) -> LatentCodec:
    """The codec model of a new archive, fitted on :func:`calibration_ws` per the job's profile and
    coder; profile ``auto`` meets ``job.target_bytes`` per image, its bits weighted by how strongly
    each layer moves the generator's images; profile ``matched`` takes the bits
    :func:`choose_matched_bits` measures (recorded in the model's ``info["rate_control"]``)."""
    images = calibration_images(job, models.resolution)
    encoded = _encode(job, models, images) if images else None
    ws = torch.cat([*([encoded] if encoded is not None else []), _mapping_ws(models)])
    coder = canonical_coder(job.coder)
    if job.profile == AUTO_PROFILE:
        from sg3archive.networks.sensitivity import layer_sensitivity

        weights = layer_sensitivity(models.G, ws[:SENSITIVITY_SAMPLES].to(models.device))
        return LatentCodec.fit(ws, AUTO_PROFILE, coder=coder, target_bytes=job.target_bytes,
                               layer_weights=[float(w) for w in weights])
    if job.profile == MATCHED_PROFILE:
        choice = choose_matched_bits(job, models, images, encoded, ws)
        fitted = LatentCodec.fit(ws, list(choice.bits), coder=coder)
        model = dataclasses.replace(fitted.model, profile=MATCHED_PROFILE,
                                    info={**fitted.model.info, "rate_control": choice.info()})
        return LatentCodec(model, fitted.coder)
    return LatentCodec.fit(ws, profile=job.profile, coder=coder)
