"""Rate–distortion refinement: the codec's straight-through quantization and rate
(``LatentCodec.quantized``), the prediction runs it models, and ``rd_refine`` on the bundled
generator with real coded payloads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec import quantize as qz
from sg3archive.codec.bitstream import HEADER_BYTES
from sg3archive.codec.errors import CodecError
from sg3archive.encoding import encode_images
from sg3archive.pipeline.session import cache
from sg3archive.quality.contract import QualityContract
from sg3archive.refinement import rd_refine
from sg3archive.training.data import SyntheticPairs


@pytest.fixture(scope="module")
def models():
    return cache.models(None, None, "cpu")


@pytest.fixture(scope="module")
def mapping_ws(models) -> torch.Tensor:
    """Style-mixed W+ of the bundled generator (the codec's calibration kind)."""
    return SyntheticPairs(models.G).ws(256, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def images(models) -> torch.Tensor:
    """Three held-out images of the bundled generator at PNG levels."""
    pairs = SyntheticPairs(models.G)
    with torch.no_grad():
        x = pairs.images(pairs.ws(3, torch.Generator().manual_seed(424242))).clamp(-1, 1)
    return ((x + 1) * 127.5).round() / 127.5 - 1


def _psnr(ws: torch.Tensor, codec: LatentCodec, G, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(PSNR dB, payload bytes) per image of ``ws`` through compress / decompress / synthesis."""
    payloads = codec.compress(ws)
    with torch.no_grad():
        recon = G.synthesis(codec.decompress(payloads)).clamp(-1, 1)
    mse = (recon - x).square().mean(dim=(1, 2, 3))
    return (10 * torch.log10(4 / mse)).numpy(), np.array([len(p) for p in payloads], dtype=np.float64)


@pytest.mark.parametrize("profile", [3, "balanced"])
def test_quantized_values_are_what_decompress_returns(mapping_ws, profile) -> None:
    codec = LatentCodec.fit(mapping_ws[:200], profile)
    test = mapping_ws[200:216]
    w_hat, bits = codec.quantized(test)
    assert torch.allclose(w_hat, codec.decompress(codec.compress(test)), atol=1e-5)
    assert bits.shape == (16,) and torch.isfinite(bits).all()


@pytest.mark.parametrize("profile", [2, 3, 5])
def test_quantized_bits_are_the_coded_symbols_cost(mapping_ws, profile) -> None:
    """The estimate follows the real payloads: total within 10 % of the coded bytes (headers
    aside), and it ranks images as their payload sizes do."""
    codec = LatentCodec.fit(mapping_ws[:200], profile)
    test = mapping_ws[200:232] + 0.02 * torch.randn(32, *mapping_ws.shape[1:], generator=torch.Generator().manual_seed(1))
    _, bits = codec.quantized(test)
    coded = np.array([len(p) - HEADER_BYTES for p in codec.compress(test)], dtype=np.float64)
    estimate = bits.numpy() / 8
    assert abs(estimate.sum() / coded.sum() - 1) < 0.10
    assert np.corrcoef(estimate, coded)[0, 1] > 0.9


def test_the_rate_gradient_lowers_the_real_payload_size(mapping_ws) -> None:
    codec = LatentCodec.fit(mapping_ws[:200], 4)
    test = mapping_ws[200:216].clone()
    w = (test + 0.05 * torch.randn(test.shape, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    _, bits = codec.quantized(w)
    bits.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    before = sum(len(p) for p in codec.compress(w.detach()))
    stepped = w.detach() - 0.02 * w.grad / w.grad.abs().amax(dim=(1, 2), keepdim=True)
    after = sum(len(p) for p in codec.compress(stepped))
    assert after < 0.95 * before


def test_prediction_runs_reproduce_the_transmitted_symbols(mapping_ws) -> None:
    """Layer l is predicted from the layers ``runs[l]`` .. l-1: the rounded fixed-point mean of
    their indices is exactly q - k, for style-mixed codes whose runs restart."""
    codec = LatentCodec.fit(mapping_ws[:200], "balanced")
    m = codec.model
    q = qz.indices(mapping_ws[200:240].double().numpy(), m.centre, m.encode_matrix, m.steps)
    k, runs = qz.residuals_and_runs(q, m.coef, m.reset, m.units)
    assert np.array_equal(k, qz.residuals(q, m.coef, m.reset, m.units))
    assert (runs[:, 2:, 0] > 0).any(), "no run restarted: the test codes do not exercise resets"
    units = m.units.astype(np.int64)
    for layer in range(1, q.shape[1]):
        for i in range(len(q)):
            first = int(runs[i, layer, 0])
            total = (q[i, first:layer] * units[first:layer, None]).sum(axis=0)
            count = layer - first
            den = count * int(units[layer])
            pred = (2 * m.coef[layer] * total + (den << qz.PRED_SHIFT)) // (den << (qz.PRED_SHIFT + 1))
            assert np.array_equal(q[i, layer] - k[i, layer], pred)


def test_quantized_refuses_latents_outside_the_codec_range(mapping_ws) -> None:
    codec = LatentCodec.fit(mapping_ws[:200], 3)
    with pytest.raises(CodecError, match="outside the range"):
        codec.quantized(mapping_ws[:2] * 1e9)
    with pytest.raises(CodecError, match="shape"):
        codec.quantized(mapping_ws[:2, :3])


@pytest.fixture(scope="module")
def start(models, mapping_ws, images) -> tuple[torch.Tensor, LatentCodec]:
    ws = encode_images(models.encoder, images)
    return ws, LatentCodec.fit(torch.cat([ws, mapping_ws]), 3)


def test_rd_refinement_beats_the_encoder_on_coded_latents(models, images, start) -> None:
    """Measured on real payloads: every image's −PSNR + λ·bytes is no worse than the encoder's
    latent's, and the mean PSNR gains more than 1 dB."""
    ws, codec = start
    lam = 0.01
    refined = rd_refine(models.G, ws, images, codec, steps=6, rd_lambda=lam)
    p0, b0 = _psnr(ws, codec, models.G, images)
    p1, b1 = _psnr(refined.ws, codec, models.G, images)
    assert refined.steps == [6, 6, 6]
    assert np.all(-p1 + lam * b1 <= -p0 + lam * b0 + 1e-3)
    assert p1.mean() > p0.mean() + 1.0


def test_lambda_trades_bytes_for_fidelity(models, images, start) -> None:
    ws, codec = start
    cheap = rd_refine(models.G, ws, images, codec, steps=6, rd_lambda=0.3).ws
    faithful = rd_refine(models.G, ws, images, codec, steps=6, rd_lambda=0.0).ws
    p_cheap, b_cheap = _psnr(cheap, codec, models.G, images)
    p_faithful, b_faithful = _psnr(faithful, codec, models.G, images)
    assert b_cheap.sum() < b_faithful.sum()
    assert p_faithful.mean() > p_cheap.mean()


def test_images_that_meet_the_contract_stop_early(models, images, start) -> None:
    ws, codec = start
    p0, _ = _psnr(ws, codec, models.G, images)
    met_already = rd_refine(models.G, ws, images, codec, steps=5,
                            contract=QualityContract(min_psnr=float(p0.min()) - 0.5))
    assert met_already.steps == [0, 0, 0]
    assert torch.equal(met_already.ws, ws)
    never = rd_refine(models.G, ws, images, codec, steps=3, contract=QualityContract(min_psnr=99.0))
    assert never.steps == [3, 3, 3]
    # A floor between the images: the ones below it run, the one above it keeps its latent.
    order = np.argsort(p0)
    floor = float((p0[order[-1]] + p0[order[-2]]) / 2)
    some = rd_refine(models.G, ws, images, codec, steps=3, contract=QualityContract(min_psnr=floor))
    assert some.steps[order[-1]] == 0 and torch.equal(some.ws[order[-1]], ws[order[-1]])
    assert all(some.steps[i] > 0 for i in order[:-1])


def test_no_steps_returns_the_input(models, images, start) -> None:
    ws, codec = start
    out = rd_refine(models.G, ws, images, codec, steps=0)
    assert out.ws is ws and out.steps == [0, 0, 0]


def test_compress_cli_refines_for_the_rate_and_records_lambda(tmp_path) -> None:
    """``compress --refine-steps N --lambda L`` through the CLI: the archive records λ, and a
    larger λ stores fewer bytes than λ = 0 for the same images and codec profile."""
    from click.testing import CliRunner

    from sg3archive.cli import main
    from sg3archive.store.archive import ArchiveStore

    runner = CliRunner()
    src = tmp_path / "src"
    res = runner.invoke(main, ["generate", "--seeds", "910000-910002", "--trunc", "0.7", "--out", str(src), "--no-grid",
                               "--device", "cpu"])
    assert res.exit_code == 0, res.output
    sizes = {}
    for lam in ("0", "0.3"):
        dest = tmp_path / f"archive-{lam}"
        res = runner.invoke(main, ["compress", str(src), str(dest), "--device", "cpu", "--profile", "3",
                                   "--refine-steps", "4", "--lambda", lam, "--representations", "latent",
                                   "--quality", "none", "--calibration-images", "3"])
        assert res.exit_code == 0, res.output
        store = ArchiveStore.open(str(dest))
        assert store.settings["rd_lambda"] == float(lam) and store.settings["refine_steps"] == 4
        sizes[lam] = sum(len(p) for b in store.iter_batches("images", columns=["payload"])
                         for p in b.column("payload").to_pylist())
    assert sizes["0.3"] < sizes["0"]
    res = runner.invoke(main, ["compress", str(src), str(tmp_path / "bad"), "--lambda", "-1"])
    assert res.exit_code == 1 and "--lambda" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "bad").exists()


def test_slow_runs_report_seconds_per_image() -> None:
    """Refinement at full size on a CPU runs at well under 0.1 images/s: the summary says s/image."""
    from sg3archive.pipeline.compress import CompressReport

    slow = CompressReport("out/a", shards=1, images=2, payload_bytes=300, source_bytes=9000, seconds=101.0).text()
    assert "50.5 s/image" in slow and "images/s" not in slow
    fast = CompressReport("out/a", shards=1, images=20, payload_bytes=3000, source_bytes=9000, seconds=4.0).text()
    assert "5.00 images/s" in fast


def test_an_lpips_ceiling_puts_lpips_into_the_objective(models, images, start, lpips_alex) -> None:
    """With an LPIPS ceiling and the LPIPS model, refinement lowers LPIPS too and stops where the
    ceiling is met; without the model an LPIPS ceiling is never taken as met."""
    ws, codec = start
    with torch.no_grad():
        before = lpips_alex(models.G.synthesis(codec.decompress(codec.compress(ws))).clamp(-1, 1), images).flatten()
    strict = rd_refine(models.G, ws, images, codec, steps=6, contract=QualityContract(max_lpips=1e-6),
                       perceptual=lpips_alex)
    with torch.no_grad():
        after = lpips_alex(models.G.synthesis(codec.decompress(codec.compress(strict.ws))).clamp(-1, 1), images).flatten()
    assert strict.steps == [6, 6, 6] and float(after.mean()) < float(before.mean())
    loose = QualityContract(max_lpips=float(before.max()) + 0.01)
    assert rd_refine(models.G, ws, images, codec, steps=4, contract=loose, perceptual=lpips_alex).steps == [0, 0, 0]
    assert rd_refine(models.G, ws, images, codec, steps=2, contract=loose).steps == [2, 2, 2]


def test_a_step_out_of_the_codec_range_keeps_the_best_latent_so_far(models, images, start) -> None:
    ws, codec = start
    out = rd_refine(models.G, ws, images, codec, steps=3, lr=1e12)  # the first step leaves the range
    assert torch.equal(out.ws, ws)
    codec.compress(out.ws)  # still codable
