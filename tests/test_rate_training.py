"""Rate-aware encoder training: the rate term's codec (fitted on the encoder's outputs, refitted
on schedule), its gradient, and training runs that log it, lower it, and resume with it."""

from __future__ import annotations

import json

import pytest
import torch

import sg3archive
from sg3archive.training import TrainConfig, train_encoder
from sg3archive.training.rate import RATE_CALIBRATION_IMAGES, RateTerm

SMALL = dict(encoder="hierarchical", width=0.25, batch_size=4, lpips_net=None, log_every=1, sample_every=0,
             checkpoint_every=100, synthetic_pool=64, image_every=0, kl_start=1000)


@pytest.fixture(scope="module")
def t64(sg3_reference_dir):
    return sg3archive.load_network(str(sg3_reference_dir / "t64" / "network-snapshot.pkl"))


def _encoder(G):
    from sg3archive.networks.encoder import build_encoder

    torch.manual_seed(0)
    return build_encoder("hierarchical", num_ws=G.num_ws, w_dim=G.w_dim, img_resolution=G.img_resolution,
                         img_channels=G.img_channels, width=0.25, w_avg=G.mapping.w_avg.detach().clone())


def test_rate_term_fits_on_the_encoder_and_refits_when_due(t64) -> None:
    encoder = _encoder(t64)
    draws = []

    def draw(rng: torch.Generator) -> torch.Tensor:
        draws.append(1)
        return torch.rand(8, 3, 64, 64, generator=rng) * 2 - 1

    term = RateTerm(profile=4, refit_every=10, seed=0)
    assert term.due(0)
    codec = term.fit(encoder, draw, step=0)
    assert codec.bits == [4.0] * t64.num_ws and codec.model.info["calibration_count"] == RATE_CALIBRATION_IMAGES
    assert len(draws) == RATE_CALIBRATION_IMAGES // 8
    assert not term.due(9) and term.due(10)
    refit = term.fit(encoder, draw, step=10)
    assert len(draws) == RATE_CALIBRATION_IMAGES // 8, "a refit re-encodes the kept images, it draws none"
    assert refit.hash == codec.hash  # same encoder, same images: the same codec

    means = encoder(torch.rand(4, 3, 64, 64) * 2 - 1).mean
    bits = term.bits_per_value(means, torch.Generator().manual_seed(0))
    assert bits.ndim == 0 and 0 < float(bits.detach()) < 16
    bits.backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_unfitted_rate_term_says_so(t64) -> None:
    with pytest.raises(RuntimeError, match="fit"):
        RateTerm(4, 10, 0).bits_per_value(torch.zeros(1, t64.num_ws, t64.w_dim), torch.Generator())


@pytest.fixture(scope="module")
def bundled():
    from sg3archive.assets import default_encoder_url
    from sg3archive.pipeline.session import cache

    return cache.models(None, None, "cpu").G, default_encoder_url()


def test_training_with_the_rate_term_lowers_the_rate_and_resumes(bundled, tmp_path) -> None:
    """Fine-tuning the bundled encoder with the latent loss and a heavy rate term: the logged rate
    falls while the codec stays fitted; a run resumed at a refit step reaches the same state as an
    uninterrupted one (the codec is refitted from the restored encoder)."""
    G, encoder_dir = bundled
    config = TrainConfig(steps=10, lr=1e-4, rate_weight=2.0, rate_refit_every=5, checkpoint_every=5,
                         **{k: v for k, v in SMALL.items() if k != "checkpoint_every"})
    uninterrupted = train_encoder(G, config, tmp_path / "whole", progress=False, init_from=encoder_dir)
    log = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["rate"] for r in log]
    assert len(rates) == 10 and all(r > 0 for r in rates)
    assert sum(rates[3:5]) < 0.9 * sum(rates[0:2]), rates  # steps 0-4 share the codec fitted at step 0

    part = train_encoder(G, config, tmp_path / "resumed", progress=False, max_steps_this_run=5, init_from=encoder_dir)
    assert part.step == 5
    whole = train_encoder(G, config, tmp_path / "resumed", progress=False, init_from=encoder_dir)
    assert whole.step == 10
    for a, b in zip(uninterrupted.encoder.state_dict().values(), whole.encoder.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_rate_settings_are_checked_and_old_checkpoints_read_without_them() -> None:
    with pytest.raises(ValueError, match="--rate-profile"):
        TrainConfig(rate_profile=0)
    with pytest.raises(ValueError, match="--rate-weight"):
        TrainConfig(rate_weight=-1)
    old = TrainConfig().settings_dict()
    for key in ("rate_weight", "rate_profile", "rate_refit_every"):
        old.pop(key)
    assert TrainConfig.from_dict(old).rate_weight == 0.0  # what runs before the rate term did
