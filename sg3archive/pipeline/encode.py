"""The one encode path of the pipeline: images -> W+ (encoder, then rate–distortion refinement
for the archive's codec when the job asks for it) -> quantized payloads -> reconstructions and their quality figures.

Codec calibration (:mod:`sg3archive.pipeline.calibrate`) and compression
(:func:`sg3archive.pipeline.compress.compress_shard`) both call :func:`encode_latents`: the codec is
fitted on the encoder's latents, and compression refines them (when asked) for that fitted codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sg3archive.codec import LatentCodec
from sg3archive.encoding import encode_images
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.refinement import rd_refine


@dataclass(frozen=True)
class CodedBatch:
    """One batch of images coded: a payload, a reconstruction (``[3, R, R]`` in [-1, 1], on the
    CPU) and the quality figures of each (``lpips`` is ``None`` when it is not measured)."""

    payloads: list[bytes]
    recon: torch.Tensor
    psnr: list[float]
    ms_ssim: list[float]
    lpips: list[float] | None


def encode_latents(models: Any, x: torch.Tensor, job: CompressJob, codec: LatentCodec | None = None,
                   perceptual: torch.nn.Module | None = None) -> torch.Tensor:
    """W+ ``[N, num_ws, w_dim]`` of images ``x [N, 3, R, R]`` on the models' device: the encoder's
    means, then, with a ``codec`` and ``job.refine_steps`` > 0, rate–distortion refined for that
    codec (:func:`sg3archive.refinement.rd_refine`: ``job.rd_lambda``, stopping where
    ``job.quality`` is met; ``perceptual`` adds LPIPS when the contract has an LPIPS ceiling).

    Without a codec (the codec's own calibration) the encoder's means are returned: refinement
    optimizes for a fitted codec. Works in chunks of ``job.batch_size`` (a compress batch is one chunk)."""
    parts = []
    for start in range(0, len(x), job.batch_size):
        chunk = x[start : start + job.batch_size]
        ws = encode_images(models.encoder, chunk, job.batch_size)
        if job.refine_steps and codec is not None:
            ws = rd_refine(models.G, ws, chunk, codec, steps=job.refine_steps, rd_lambda=job.rd_lambda,
                           contract=job.quality, perceptual=perceptual).ws
        parts.append(ws)
    return torch.cat(parts) if parts else torch.empty(0)


def reconstruct(models: Any, ws: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Images ``[N, 3, R, R]`` in [-1, 1] synthesized from W+ ``ws`` in batches."""
    with torch.no_grad():
        return torch.cat([models.G.synthesis(ws[i : i + batch_size])
                          for i in range(0, len(ws), batch_size)]).clamp(-1, 1)


def code_batch(models: Any, codec: LatentCodec, x: torch.Tensor, job: CompressJob,
               perceptual: torch.nn.Module | None = None, *, measure_lpips: bool = True) -> CodedBatch:
    """Encode (:func:`encode_latents`), quantize and entropy-code images ``x`` (on the models'
    device), decode the payloads again and measure each reconstruction against its input: PSNR,
    MS-SSIM and, when ``perceptual`` (an LPIPS model) is given and ``measure_lpips``, LPIPS.
    Refinement uses ``perceptual`` where the job's contract has an LPIPS ceiling."""
    ws = encode_latents(models, x, job, codec, perceptual)
    payloads = codec.compress(ws.cpu())
    ws_hat = codec.decompress(payloads).to(models.device)
    recon = reconstruct(models, ws_hat, job.batch_size)
    p, s = psnr(recon, x).cpu(), ms_ssim(recon, x).cpu()
    lp = None
    if perceptual is not None and measure_lpips:
        with torch.no_grad():
            lp = [float(v) for v in torch.cat([perceptual(recon[i : i + job.batch_size], x[i : i + job.batch_size])
                                               for i in range(0, len(x), job.batch_size)]).cpu()]
    return CodedBatch(list(payloads), recon.cpu(), [float(v) for v in p], [float(v) for v in s], lp)
