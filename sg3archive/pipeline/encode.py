"""The one encode path of the pipeline: images -> W+ (encoder, then latent refinement when the
job asks for it) -> quantized payloads -> reconstructions and their quality figures.

Codec calibration (:mod:`sg3archive.pipeline.calibrate`) and compression
(:func:`sg3archive.pipeline.compress.compress_shard`) both call :func:`encode_latents`, so the
codec is fitted on exactly the kind of latents it will code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sg3archive.codec import LatentCodec
from sg3archive.encoding import encode_images, refine_latents
from sg3archive.metrics import ms_ssim, psnr
from sg3archive.pipeline.jobs import CompressJob


@dataclass(frozen=True)
class CodedBatch:
    """One batch of images coded: a payload, a reconstruction (``[3, R, R]`` in [-1, 1], on the
    CPU) and the quality figures of each (``lpips`` is ``None`` when it is not measured)."""

    payloads: list[bytes]
    recon: torch.Tensor
    psnr: list[float]
    ms_ssim: list[float]
    lpips: list[float] | None


def encode_latents(models: Any, x: torch.Tensor, job: CompressJob) -> torch.Tensor:
    """W+ ``[N, num_ws, w_dim]`` of images ``x [N, 3, R, R]`` on the models' device: the encoder's
    means, refined for ``job.refine_steps`` Adam steps against the images when that is > 0.

    Works in chunks of ``job.batch_size`` (a compress batch is one chunk)."""
    parts = []
    for start in range(0, len(x), job.batch_size):
        chunk = x[start : start + job.batch_size]
        ws = encode_images(models.encoder, chunk, job.batch_size)
        if job.refine_steps:
            ws = refine_latents(models.G, ws, chunk, steps=job.refine_steps)
        parts.append(ws)
    return torch.cat(parts) if parts else torch.empty(0)


def reconstruct(models: Any, ws: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Images ``[N, 3, R, R]`` in [-1, 1] synthesized from W+ ``ws`` in batches."""
    with torch.no_grad():
        return torch.cat([models.G.synthesis(ws[i : i + batch_size])
                          for i in range(0, len(ws), batch_size)]).clamp(-1, 1)


def code_batch(models: Any, codec: LatentCodec, x: torch.Tensor, job: CompressJob,
               perceptual: torch.nn.Module | None = None) -> CodedBatch:
    """Encode (:func:`encode_latents`), quantize and entropy-code images ``x`` (on the models'
    device), decode the payloads again and measure each reconstruction against its input: PSNR,
    MS-SSIM and, when ``perceptual`` (an LPIPS model) is given, LPIPS."""
    ws = encode_latents(models, x, job)
    payloads = codec.compress(ws.cpu())
    ws_hat = codec.decompress(payloads).to(models.device)
    recon = reconstruct(models, ws_hat, job.batch_size)
    p, s = psnr(recon, x).cpu(), ms_ssim(recon, x).cpu()
    lp = None
    if perceptual is not None:
        with torch.no_grad():
            lp = [float(v) for v in torch.cat([perceptual(recon[i : i + job.batch_size], x[i : i + job.batch_size])
                                               for i in range(0, len(x), job.batch_size)]).cpu()]
    return CodedBatch(list(payloads), recon.cpu(), [float(v) for v in p], [float(v) for v in s], lp)
