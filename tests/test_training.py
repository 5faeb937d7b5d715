"""Encoder training on the fixture generator: losses, resuming, fingerprints, CLI, flow, bundled pack."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import sg3archive
from sg3archive.checkpoints.encoder_file import load_encoder, save_encoder
from sg3archive.cli import main
from sg3archive.errors import FingerprintMismatchError
from sg3archive.training import TrainConfig, WPrior, fit_w_prior, gaussian_kl, train_encoder
from sg3archive.training.losses import LOSS_PRESETS

SMALL = dict(encoder="hierarchical", width=0.25, batch_size=4, lpips_net=None, log_every=1, sample_every=0,
             checkpoint_every=2, synthetic_pool=8, image_every=0)


@pytest.fixture(scope="module")
def t64(sg3_reference_dir):
    return sg3archive.load_network(str(sg3_reference_dir / "t64" / "network-snapshot.pkl"))


@pytest.fixture(scope="module")
def r64(sg3_reference_dir):
    return sg3archive.load_network(str(sg3_reference_dir / "r64" / "network-snapshot.pkl"))


def test_kl_is_the_gaussian_kl_divergence() -> None:
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    prior = WPrior(torch.randn(5, generator=g), torch.randn(5, generator=g))
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(prior.mean.expand_as(mean), (0.5 * prior.logvar).exp().expand_as(mean))
    expected = torch.distributions.kl_divergence(q, p).mean()
    assert torch.allclose(gaussian_kl(mean, logvar, prior), expected, atol=1e-6)
    same = gaussian_kl(prior.mean.expand(2, 3, 5), prior.logvar.expand(2, 3, 5), prior)
    assert abs(float(same)) < 1e-7  # zero exactly at the prior
    assert float(gaussian_kl(mean, logvar, prior)) > 0


def test_prior_matches_the_mapping_network(t64) -> None:
    prior = fit_w_prior(t64, num_samples=2048)
    assert torch.equal(prior.mean, t64.mapping.w_avg)
    z = torch.randn(2048, t64.z_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        w = t64.mapping(z, None)[:, 0]
    ratio = ((w - t64.mapping.w_avg) ** 2).mean(0) / prior.logvar.exp()
    assert 0.8 < float(ratio.median()) < 1.25  # independent samples agree on the variance


def test_loss_presets_are_the_guides_table() -> None:
    assert LOSS_PRESETS == {"high_quality": (1.0, 0.005, 0.8, 0.2), "high_compression": (0.6, 0.02, 1.0, 0.1),
                            "artistic": (0.4, 0.01, 1.2, 0.0), "photo_realistic": (1.0, 0.005, 1.0, 0.5)}


@pytest.mark.parametrize("bad", [dict(lr=0.5), dict(encoder="cnn"), dict(preset="x"), dict(batch_size=0),
                                 dict(progressive=(5, 1)), dict(lpips_net="squeeze")])
def test_bad_configs_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="bad training configuration"):
        TrainConfig(**bad)


def test_latent_training_reduces_the_loss(t64, tmp_path) -> None:
    config = TrainConfig(steps=30, lr=1e-3, **SMALL)
    result = train_encoder(t64, config, tmp_path, progress=False)
    losses = [h["latent"] for h in result.history]
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_image_losses_with_lpips_and_feature_matching_reduce_the_loss(t64, sg3_reference_dir, lpips_alex,
                                                                      tmp_path) -> None:
    """All loss terms on (rec, KL after warm-up, LPIPS, D feature matching, latent) on a fixed pool."""
    D = sg3archive.load_network(str(sg3_reference_dir / "t64" / "network-snapshot.pkl"), key="D")
    config = TrainConfig(steps=8, lr=2e-3, kl_start=2, **dict(SMALL, synthetic_pool=4, lpips_net="alex",
                                                              image_every=1, preset="photo_realistic"))
    result = train_encoder(t64, config, tmp_path, D=D, lpips=lpips_alex, progress=False)
    first, last = result.history[0], result.history[-1]
    assert {"latent", "rec", "perceptual", "feature_match"} <= set(first) and "kl" not in first
    assert "kl" in last and last["kl_factor"] == 1.0
    image_loss = lambda h: h["rec"] + h["perceptual"] + 0.5 * h["feature_match"]  # noqa: E731
    assert image_loss(last) < image_loss(first)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 8


def test_resume_reaches_the_same_state(t64, tmp_path) -> None:
    config = TrainConfig(steps=4, lr=1e-3, kl_start=1, **SMALL)  # sampling on: the RNG state must resume too
    straight = train_encoder(t64, config, tmp_path / "a", progress=False)
    partial = train_encoder(t64, config, tmp_path / "b", progress=False, max_steps_this_run=2)
    assert partial.step == 2
    resumed = train_encoder(t64, config, tmp_path / "b", progress=False)
    assert resumed.step == 4
    sa, sb = straight.encoder.state_dict(), resumed.encoder.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    with pytest.raises(ValueError, match="different settings"):
        train_encoder(t64, TrainConfig(steps=6, lr=5e-4, kl_start=1, **SMALL), tmp_path / "b", progress=False)


def test_generator_mismatch_is_refused(t64, r64, tmp_path) -> None:
    config = TrainConfig(steps=2, **SMALL)
    result = train_encoder(t64, config, tmp_path / "run", progress=False)
    save_encoder(result.encoder, str(tmp_path / "enc"), generator_fingerprint=t64.fingerprint)
    assert load_encoder(str(tmp_path / "enc"), generator=t64).fingerprint
    with pytest.raises(FingerprintMismatchError, match="trained against generator"):
        load_encoder(str(tmp_path / "enc"), generator=r64)
    with pytest.raises(FingerprintMismatchError):  # resuming a run against another generator
        train_encoder(r64, config, tmp_path / "run", progress=False)
    weights = tmp_path / "enc" / "encoder.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight changed
    weights.write_bytes(bytes(data))
    with pytest.raises(FingerprintMismatchError, match="modified or damaged"):
        load_encoder(str(tmp_path / "enc"), generator=t64)


def test_cli_train_export_and_evaluate(sg3_reference_dir, tmp_path) -> None:
    net = str(sg3_reference_dir / "t64" / "network-snapshot.pkl")
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--network", net, "--out", str(tmp_path / "run"), "--export",
                               str(tmp_path / "enc"), "--width", "0.25", "--steps", "3", "--batch-size", "2",
                               "--image-every", "2", "--lpips", "none", "--device", "cpu", "--log-every", "1",
                               "--sample-every", "3"])
    assert res.exit_code == 0, res.output
    assert "trained to step 3" in res.output
    assert (tmp_path / "run" / "samples" / "step_000003.png").exists()
    res = runner.invoke(main, ["evaluate-encoder", "--network", net, "--encoder", str(tmp_path / "enc"),
                               "--images", "4", "--lpips", "none", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc) == {"encoder", "mean_latent"} and set(doc["encoder"]) == {"psnr", "ms_ssim"}
    res = runner.invoke(main, ["train", "--network", net, "--out", str(tmp_path / "run2"), "--lr", "0.5"])
    assert res.exit_code != 0 and "lr 0.5 is outside" in res.output


def test_bundled_encoder_beats_the_mean_latent_image() -> None:
    """The shipped pack loads (fingerprints agree) and its encoder is far better than G(w_avg)."""
    from sg3archive.assets import default_encoder_url, default_network_url
    from sg3archive.training.evaluate import evaluate_encoder

    G = sg3archive.load_network(default_network_url())
    encoder = load_encoder(default_encoder_url(), generator=G)
    result = evaluate_encoder(G, encoder, 8, batch_size=8)
    assert result["encoder"]["psnr"] > result["mean_latent"]["psnr"] + 4
    assert result["encoder"]["ms_ssim"] > result["mean_latent"]["ms_ssim"]


def test_real_images_train_and_bad_files_are_skipped(t64, tmp_path) -> None:
    """Real images from a folder, decoded as the archive decodes them; an unreadable one is recorded."""
    import shutil
    from pathlib import Path

    from sg3archive.training.data import RealImages

    folder = tmp_path / "photos"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "images", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    real = RealImages(str(folder), t64.img_resolution)
    assert len(real.urls) == 14  # 10 textures, 3 photos, 1 broken file
    x = real(40, torch.Generator().manual_seed(0))
    assert x.shape == (40, 3, 64, 64) and -1 <= float(x.min()) and float(x.max()) <= 1
    assert list(real.bad) == [next(u for u in real.urls if u.endswith("broken.png"))]
    config = TrainConfig(steps=2, data=str(folder), real_fraction=0.5, **SMALL)
    result = train_encoder(t64, config, tmp_path / "run", progress=False)
    assert result.step == 2 and all(math.isfinite(h["loss"]) for h in result.history)
