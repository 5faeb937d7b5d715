"""Profile ``matched`` (the default): bits per layer chosen by the measured end-to-end loss, on the
bundled generator and encoder (real networks, real synthesis, real codec fits)."""

from __future__ import annotations

import functools
from typing import Any

import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec.names import DEFAULT_PROFILE, MATCHED_PROFILE, PROFILE_NAMES, check_profile
from sg3archive.codec.profiles import PRESETS, guide_group, resolve_bits
from sg3archive.encoding import encode_images
from sg3archive.metrics import psnr
from sg3archive.pipeline.calibrate import fit_codec
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.pipeline.rate_control import MAX_CHECKS, SENSITIVITY_CODES, choose_bits
from sg3archive.pipeline.session import cache
from sg3archive.training.data import SyntheticPairs

EVAL = 4  # evaluation images: small, so the test stays fast (the pipeline uses 16-32)


@functools.cache
def _setup() -> tuple:
    models: Any = cache.models(device="cpu")
    pairs = SyntheticPairs(models.G, synth_batch=8)
    ws_calib = pairs.ws(128, torch.Generator().manual_seed(3)).cpu()
    x = pairs.images(pairs.ws(EVAL, torch.Generator().manual_seed(4))).cpu()
    with torch.no_grad():
        ws_eval = encode_images(models.encoder, x, EVAL).cpu()
    return models, ws_calib, ws_eval, x


def test_matched_allocation_meets_its_loss_bound_for_fewer_bytes_than_balanced() -> None:
    models, ws_calib, ws_eval, x = _setup()
    choice = choose_bits(models.G, ws_calib, ws_eval, x, max_loss_db=0.1, batch_size=8)
    assert choice.met and len(choice.bits) == models.G.num_ws
    assert choice.synthesized_images <= EVAL * (1 + MAX_CHECKS) + SENSITIVITY_CODES * models.G.num_ws
    # measured again here, independently of the search: the codec as the archive fits it
    codec = LatentCodec.fit(ws_calib, list(choice.bits))
    with torch.no_grad():
        base = psnr(models.G.synthesis(ws_eval).clamp(-1, 1), x)
        coded = psnr(models.G.synthesis(codec.quantize(ws_eval).float()).clamp(-1, 1), x)
    loss = float(base.mean() - coded.mean())
    assert loss <= 0.1 + 0.02, (choice, loss)
    assert abs(loss - choice.loss_db) < 0.02
    balanced = LatentCodec.fit(ws_calib, "balanced")
    assert codec.estimate(ws_eval)[0] < balanced.estimate(ws_eval)[0]
    assert choose_bits(models.G, ws_calib, ws_eval, x, max_loss_db=0.1, batch_size=8).bits == choice.bits  # seeded


def test_matched_is_the_default_and_presets_keep_the_guide_table() -> None:
    assert DEFAULT_PROFILE == MATCHED_PROFILE and MATCHED_PROFILE in PROFILE_NAMES
    assert check_profile(MATCHED_PROFILE) == MATCHED_PROFILE
    assert CompressJob(source="s", destination="d").profile == MATCHED_PROFILE
    assert resolve_bits(MATCHED_PROFILE, 16)[0] == MATCHED_PROFILE  # a resumed "matched" archive's name matches
    models: Any = cache.models(device="cpu")
    job = CompressJob(source="s", destination="d", device="cpu", calibration_images=0, profile="balanced")
    codec = fit_codec(job, models)
    num_ws = models.G.num_ws
    assert codec.model.profile == "balanced"
    assert codec.bits == [float(PRESETS["balanced"][guide_group(layer, num_ws)]) for layer in range(num_ws)]
