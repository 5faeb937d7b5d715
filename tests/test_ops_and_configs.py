"""Fast ops against the reference ops, whole small networks in several configs, and network files.

``sg3archive.ops.reference`` is the numerical truth (checked against NVIDIA's outputs in
test_generator_reference.py, and against plain zero-insertion + convolution here);
``sg3archive.ops.fast`` is the default path and must agree with it to float32 accuracy.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sg3archive import load_network
from sg3archive.checkpoints.fingerprint import network_fingerprint
from sg3archive.checkpoints.network_file import save_networks
from sg3archive.errors import FingerprintMismatchError, NetworkFormatError, Sg3ArchiveError
from sg3archive.networks import Discriminator, Generator, input_transform
from sg3archive.ops import fast, reference
from sg3archive.ops.filters import design_lowpass_filter

ATOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert tuple(a.shape) == tuple(b.shape), f"shape {list(a.shape)} != {list(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a.double() - b.double()).abs().max().item()


def _perturbed(f: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor | None:
    """A designed filter made asymmetric (as in trained networks), so its orientation matters."""
    if f is None:
        return None
    return f * (1 + 0.05 * torch.randn(f.shape, generator=gen))


# ---- modulated_conv2d ----

@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv2d_fast_matches_reference(demodulate: bool, kernel: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(100 + 10 * kernel + batch + (1000 if demodulate else 0))
    x = torch.randn([batch, 6, 11, 11], generator=gen)
    weight = torch.randn([5, 6, kernel, kernel], generator=gen)
    styles = torch.randn([batch, 6], generator=gen) + 1
    input_gain = torch.tensor(0.37)  # like magnitude_ema.rsqrt(): a 0-dim tensor
    args = dict(demodulate=demodulate, padding=kernel - 1, input_gain=input_gain)
    ref = reference.modulated_conv2d(x, weight, styles, **args)
    out = fast.modulated_conv2d(x, weight, styles, **args)
    assert ref.shape == (batch, 5, 11 + kernel - 1, 11 + kernel - 1)
    assert ref.abs().max() > 0.1
    err = _max_err(out, ref)
    assert err <= ATOL, f"max abs error {err:.3g}"
    # The gain really enters: without it the output differs by the same factor.
    no_gain = reference.modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=kernel - 1)
    assert _max_err(ref, no_gain * 0.37) <= ATOL
    if demodulate:
        # Demodulation gives every (sample, output channel) unit-norm effective weights: probing
        # with one-hot inputs of the kernel's size reads them out one input position at a time.
        taps = 6 * kernel * kernel
        probes = torch.eye(taps).reshape(taps, 6, kernel, kernel)
        for i in range(batch):
            w_eff = reference.modulated_conv2d(probes, weight, styles[i : i + 1].expand(taps, 6)).reshape(taps, 5)
            norms = w_eff.square().sum(dim=0)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), norms


def test_modulated_conv2d_per_sample_input_gain() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn([2, 4, 9, 9], generator=gen)
    weight = torch.randn([3, 4, 3, 3], generator=gen)
    styles = torch.randn([2, 4], generator=gen)
    gain = torch.rand([2, 4], generator=gen) + 0.5
    for demodulate in (True, False):
        ref = reference.modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=1, input_gain=gain)
        out = fast.modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=1, input_gain=gain)
        assert _max_err(out, ref) <= ATOL
        # A per-channel input gain is the same as scaling the input channels.
        scaled = reference.modulated_conv2d(x * gain[:, :, None, None], weight, styles, demodulate=demodulate, padding=1)
        assert _max_err(ref, scaled) <= ATOL


# ---- upfirdn2d: the reference is plain zero insertion + convolution ----

def _naive_upfirdn2d(x, f, up, down, padding, gain):
    n, c, h, w = x.shape
    z = x.new_zeros([n, c, h * up, w * up])
    z[:, :, ::up, ::up] = x
    z = F.pad(z, list(padding))  # negative padding crops
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    kernel = (f2 * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # conv2d correlates: flip for convolution
    return F.conv2d(z, kernel, groups=c)[:, :, ::down, ::down]


@pytest.mark.parametrize("down", [1, 2])
@pytest.mark.parametrize("padding", [(3, 2, 3, 2), (5, 4, 1, 0), (-2, -3, 0, -1)])
@pytest.mark.parametrize("kind", ["separable", "2d"])
def test_reference_upfirdn2d_is_zero_insertion_and_convolution(kind: str, padding, down: int) -> None:
    gen = torch.Generator().manual_seed(sum(padding) + 17 * down + (3 if kind == "2d" else 0))
    x = torch.randn([2, 3, 7, 7], generator=gen)
    f = torch.randn([6] if kind == "separable" else [5, 6], generator=gen)
    if kind == "2d":
        f = f[:, :5]  # square, non-symmetric
    out = reference.upfirdn2d(x, f, up=2, down=down, padding=padding, gain=4)
    expected = _naive_upfirdn2d(x, f, 2, down, padding, 4)
    assert _max_err(out, expected) <= 1e-5


def test_reference_upfirdn2d_is_a_true_convolution() -> None:
    """The impulse response is the filter itself, not its mirror image; flip_filter gives the mirror."""
    f = torch.arange(1.0, 21.0).reshape(4, 5)[:, :4]  # non-symmetric 4x4
    delta = torch.zeros([1, 1, 1, 1])
    delta[0, 0, 0, 0] = 1
    out = reference.upfirdn2d(delta, f, padding=(3, 3, 3, 3))
    assert torch.equal(out[0, 0], f)
    flipped = reference.upfirdn2d(delta, f, padding=(3, 3, 3, 3), flip_filter=True)
    assert torch.equal(flipped[0, 0], f.flip([0, 1]))


# ---- filtered_lrelu ----

# (in size, up, up taps / cutoff / half width, down, down taps / cutoff / half width, tmp rate, padding, radial)
# taken from the layers of the reference networks (t64 L1, L4, L13; r64 L1 with its radial filter).
LRELU_CASES = {
    "up2-down2": (38, 2, (12, 2.0, 6.0), 2, (12, 2.5198, 5.4802), 32, [9, 8, 9, 8], False),
    "up4-down2": (38, 4, (24, 4.0, 4.0), 2, (12, 5.0397, 10.96), 64, [-6, -9, -6, -9], False),
    "radial-down": (36, 2, (12, 2.0, 6.0), 2, (12, 2.5198, 5.4802), 32, [11, 10, 11, 10], True),
    "crop-84-to-64": (86, 2, (12, 32.0, 7.3966), 2, (12, 32.0, 7.3966), 128, [-11, -12, -11, -12], False),
}
LRELU_OUT = {"up2-down2": 36, "up4-down2": 52, "radial-down": 36, "crop-84-to-64": 64}


def _lrelu_inputs(case: str, seed: int, channels: int = 5, batch: int = 2):
    size, up, (tu, cu, hu), down, (td, cd, hd), fs, padding, radial = LRELU_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    fu = _perturbed(design_lowpass_filter(tu, cu, 2 * hu, fs), gen)
    fd = _perturbed(design_lowpass_filter(td, cd, 2 * hd, fs, radial=radial), gen)
    assert fd.ndim == (2 if radial else 1)
    x = torch.randn([batch, channels, size, size], generator=gen)
    b = torch.randn([channels], generator=gen) * 0.3
    return x, fu, fd, b, up, down, padding


@pytest.mark.parametrize("case", list(LRELU_CASES))
def test_filtered_lrelu_fast_matches_reference(case: str) -> None:
    x, fu, fd, b, up, down, padding = _lrelu_inputs(case, seed=len(case))
    args = dict(up=up, down=down, padding=padding, gain=np.sqrt(2), slope=0.2, clamp=256)
    ref = reference.filtered_lrelu(x, fu, fd, b, **args)
    out = fast.filtered_lrelu(x, fu, fd, b, **args)
    size = LRELU_OUT[case]
    assert ref.shape == (2, 5, size, size)
    assert ref.abs().max() > 0.1
    err = _max_err(out, ref)
    assert err <= ATOL, f"{case}: max abs error {err:.3g}"
    # Without the bias, too.
    err = _max_err(fast.filtered_lrelu(x, fu, fd, None, **args), reference.filtered_lrelu(x, fu, fd, None, **args))
    assert err <= ATOL, f"{case} without bias: max abs error {err:.3g}"


def test_filtered_lrelu_filter_orientation_matters() -> None:
    """Sanity of the test above: a mirrored up filter gives a clearly different output."""
    x, fu, fd, b, up, down, padding = _lrelu_inputs("up2-down2", seed=3)
    args = dict(up=up, down=down, padding=padding, gain=np.sqrt(2), slope=0.2, clamp=256)
    ref = reference.filtered_lrelu(x, fu, fd, b, **args)
    mirrored = reference.filtered_lrelu(x, fu.flip(0), fd, b, **args)
    assert _max_err(ref, mirrored) > 100 * ATOL


@pytest.mark.parametrize("case", ["up2-down2", "radial-down"])
def test_filtered_lrelu_clamp_active(case: str) -> None:
    x, fu, fd, b, up, down, padding = _lrelu_inputs(case, seed=11, channels=4)
    x = x * 3
    clamp = 2.0
    args = dict(up=up, down=down, padding=padding, gain=np.sqrt(2), slope=0.2)
    # Some of the upsampled, activated values exceed the clamp...
    upsampled = reference.upfirdn2d(x + b.reshape(1, -1, 1, 1), fu, up=up, padding=padding, gain=up**2)
    activated = reference.bias_act(upsampled, act="lrelu", gain=np.sqrt(2))
    assert (activated.abs() > clamp).float().mean() > 0.05
    ref = reference.filtered_lrelu(x, fu, fd, b, clamp=clamp, **args)
    unclamped = reference.filtered_lrelu(x, fu, fd, b, clamp=None, **args)
    # ...so the clamp changes the result,
    assert _max_err(ref, unclamped) > 0.1
    # and the fast path clamps at the same point (after the activation, before the down filter).
    err = _max_err(fast.filtered_lrelu(x, fu, fd, b, clamp=clamp, **args), ref)
    assert err <= ATOL, f"max abs error {err:.3g}"
    err = _max_err(fast.filtered_lrelu(x, fu, fd, b, clamp=None, **args), unclamped)
    assert err <= ATOL, f"unclamped: max abs error {err:.3g}"


@pytest.mark.parametrize("case", ["up2-down2", "radial-down"])
def test_filtered_lrelu_clamp_at_256_like_an_overdriven_layer(case: str) -> None:
    x, fu, fd, b, up, down, padding = _lrelu_inputs(case, seed=5, channels=3)
    x = x * 400
    args = dict(up=up, down=down, padding=padding, gain=np.sqrt(2), slope=0.2)
    upsampled = reference.upfirdn2d(x + b.reshape(1, -1, 1, 1), fu, up=up, padding=padding, gain=up**2)
    assert (reference.bias_act(upsampled, act="lrelu", gain=np.sqrt(2)) > 256).float().mean() > 0.01
    ref = reference.filtered_lrelu(x, fu, fd, b, clamp=256, **args)
    assert _max_err(ref, reference.filtered_lrelu(x, fu, fd, b, clamp=None, **args)) > 1.0
    # Values are in the hundreds here, so 1e-4 is a few float32 rounding steps.
    err = _max_err(fast.filtered_lrelu(x, fu, fd, b, clamp=256, **args), ref)
    assert err <= ATOL, f"max abs error {err:.3g}"


def test_filtered_lrelu_torgb_case() -> None:
    """ToRGB: no filters, no resampling, gain 1, slope 1: just bias and clamp."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn([3, 4, 16, 16], generator=gen) * 200
    b = torch.randn([4], generator=gen) * 50
    args = dict(up=1, down=1, padding=[0, 0, 0, 0], gain=1, slope=1, clamp=256)
    ref = reference.filtered_lrelu(x, None, None, b, **args)
    out = fast.filtered_lrelu(x, None, None, b, **args)
    expected = (x + b.reshape(1, -1, 1, 1)).clamp(-256, 256)
    assert (expected.abs() == 256).any()
    assert _max_err(ref, expected) <= ATOL
    assert _max_err(out, ref) <= ATOL


# ---- whole networks: fast vs reference ----

BASE = dict(z_dim=16, w_dim=16, channel_base=256, channel_max=16, mapping_kwargs={"num_layers": 2})
R_EXTRA = dict(conv_kernel=1, use_radial_filters=True, channel_base=512, channel_max=32)
CONFIGS = {
    "T16-gray-uncond": dict(img_resolution=16, img_channels=1, c_dim=0),
    "T32-rgba-cond": dict(img_resolution=32, img_channels=4, c_dim=3),
    "R16-rgba-cond": dict(img_resolution=16, img_channels=4, c_dim=3, **R_EXTRA),
    "R32-gray-uncond": dict(img_resolution=32, img_channels=1, c_dim=0, **R_EXTRA),
}


def _small_generator(name: str, seed: int = 0) -> Generator:
    """A fresh generator, then moved off its initial values (like a trained one) so every part matters."""
    torch.manual_seed(seed)
    G = Generator(**{**BASE, **CONFIGS[name]})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for key, value in G.state_dict().items():
            if key.endswith(("up_filter", "down_filter")):
                value.mul_(1 + 0.02 * torch.randn(value.shape, generator=gen))
            elif key.endswith("magnitude_ema"):
                value.fill_(float(torch.rand([], generator=gen)) + 0.5)
            elif key.endswith("bias"):
                value.add_(0.1 * torch.randn(value.shape, generator=gen))
            elif key == "synthesis.input.affine.weight":
                value.normal_(0, 0.3, generator=gen)
        # Calibrate ToRGB's input magnitude so the images have std ~0.5, as a trained network's do.
        z = torch.randn([4, G.z_dim], generator=gen)
        c = torch.randn([4, G.c_dim], generator=gen) if G.c_dim else None
        std = G(z, c).std().item()
        getattr(G.synthesis, G.synthesis.layer_names[-1]).magnitude_ema.mul_((std / 0.5) ** 2)
    return G.eval().requires_grad_(False)


def _inputs(G: Generator, seed: int, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([batch, G.z_dim], generator=gen)
    c = torch.randn([batch, G.c_dim], generator=gen) if G.c_dim else None
    return z, c


@pytest.mark.parametrize("name", list(CONFIGS))
def test_small_generator_fast_matches_reference(name: str) -> None:
    G = _small_generator(name)
    cfg = CONFIGS[name]
    radial = "use_radial_filters" in cfg
    assert G.num_ws == 16 and G.synthesis.num_ws == 16
    assert any(getattr(G.synthesis, n).down_filter is not None and getattr(G.synthesis, n).down_filter.ndim == 2
               for n in G.synthesis.layer_names) == radial
    z, c = _inputs(G, seed=1)
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=0.8)
        assert ws.shape == (2, 16, 16)
        if G.c_dim:
            other_c = torch.randn([2, G.c_dim], generator=torch.Generator().manual_seed(2))
            ws_other = G.mapping(z, other_c, truncation_psi=0.8)
            assert (ws - ws_other).abs().max() > 1e-3, "the label does not change ws"
        img_fast = G.synthesis(ws, impl="fast")
        img_ref = G.synthesis(ws, impl="reference")
        img_default = G.synthesis(ws)
        img_call = G(z, c, truncation_psi=0.8)
    res, channels = cfg["img_resolution"], cfg["img_channels"]
    assert img_fast.shape == img_ref.shape == (2, channels, res, res)
    assert 0.05 < img_ref.std() < 5 and (img_ref[0] - img_ref[1]).abs().max() > 0.05
    err = _max_err(img_fast, img_ref)
    assert err <= ATOL, f"{name}: fast vs reference max abs error {err:.3g}"
    assert torch.equal(img_default, img_fast)
    assert _max_err(img_call, img_fast) <= ATOL


def test_unknown_impl_is_a_value_error() -> None:
    G = _small_generator("T16-gray-uncond")
    ws = G.mapping(*_inputs(G, seed=1))
    with pytest.raises(ValueError, match="impl"):
        G.synthesis(ws, impl="cuda")


@pytest.mark.parametrize("name", ["T16-gray-uncond", "R16-rgba-cond"])
def test_per_sample_transform_equals_setting_the_buffer(name: str) -> None:
    G = _small_generator(name)
    z, c = _inputs(G, seed=4)
    transforms = torch.stack([input_transform((0.1, -0.05), 10.0), input_transform((-0.2, 0.15), -35.0)])
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))
    with torch.no_grad():
        ws = G.mapping(z, c)
        plain = G.synthesis(ws)
        moved = G.synthesis(ws, transform=transforms)
        single = []
        try:
            for i in range(2):
                G.synthesis.input.transform.copy_(transforms[i])
                single.append(G.synthesis(ws[i : i + 1]))
                # A [3, 3] transform argument is the same as the buffer, for the whole batch.
                assert _max_err(G.synthesis(ws, transform=transforms[i]), G.synthesis(ws)) <= ATOL
        finally:
            G.synthesis.input.transform.copy_(torch.eye(3))
    assert torch.equal(G.synthesis.input.transform, torch.eye(3))
    for i in range(2):
        err = _max_err(moved[i : i + 1], single[i])
        assert err <= ATOL, f"sample {i}: max abs error {err:.3g}"
        moved_by = (moved[i] - plain[i]).abs().max().item()
        assert moved_by > max(100 * ATOL, 0.05 * plain[i].abs().max().item()), f"sample {i}: the transform did not move the image"
    # An identity transform argument changes nothing.
    with torch.no_grad():
        assert _max_err(G.synthesis(ws, transform=torch.eye(3).expand(2, 3, 3)), plain) <= ATOL


def test_input_transform_matrix() -> None:
    assert torch.allclose(input_transform(), torch.eye(3))
    m = input_transform((0.25, -0.5), 90.0)
    # The buffer holds the inverse of the image-space motion: undo it to get rotation + translation.
    motion = torch.linalg.inv(m.double())
    assert torch.allclose(motion, torch.tensor([[0.0, 1.0, 0.25], [-1.0, 0.0, -0.5], [0.0, 0.0, 1.0]], dtype=torch.float64),
                          atol=1e-6)
    assert m.dtype == torch.float32 and m.shape == (3, 3)


def test_wrong_shapes_are_value_errors() -> None:
    G = _small_generator("R16-rgba-cond")
    with pytest.raises(ValueError, match=re.escape("[N, 16, 16]")) as excinfo:
        G.synthesis(torch.zeros([2, 15, 16]))
    assert "[2, 15, 16]" in str(excinfo.value)
    with pytest.raises(ValueError, match=re.escape("[N, 16, 16]")):
        G.synthesis(torch.zeros([2, 16, 8]))
    with pytest.raises(ValueError, match=re.escape("[N, 16, 16]")):
        G.synthesis(torch.zeros([16, 16]))
    with pytest.raises(ValueError, match=re.escape("[N, 16]")):
        G.mapping(torch.zeros([2, 8]), torch.zeros([2, 3]))
    with pytest.raises(ValueError, match=re.escape("[2, 3]")):
        G.mapping(torch.zeros([2, 16]), None)


# ---- network files: save_networks / load_network ----

def _small_discriminator(seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=3, img_resolution=16, img_channels=4, channel_base=256, channel_max=16).eval()


def _assert_round_trip(url: str, G: Generator, D: Discriminator, index: dict) -> None:
    z, c = _inputs(G, seed=8, batch=4)
    img = torch.randn([4, 4, 16, 16], generator=torch.Generator().manual_seed(9))
    G2 = load_network(url)
    D2 = load_network(url, key="D")
    assert isinstance(G2, Generator) and isinstance(D2, Discriminator)
    assert not G2.training and not any(p.requires_grad for p in G2.parameters())
    assert not D2.training and not any(p.requires_grad for p in D2.parameters())
    assert G2.fingerprint == network_fingerprint(G) == network_fingerprint(G2) == index["networks"]["G_ema"]["fingerprint"]
    assert D2.fingerprint == network_fingerprint(D) == index["networks"]["D"]["fingerprint"]
    assert G2.init_kwargs == G.init_kwargs
    with torch.no_grad():
        assert torch.equal(G2(z, c), G(z, c))
        assert torch.equal(D2(img, c), D(img, c))


def test_save_and_load_round_trip_on_disk(tmp_path: Path) -> None:
    G, D = _small_generator("R16-rgba-cond"), _small_discriminator()
    url = str(tmp_path / "net")
    index = save_networks({"G_ema": G, "D": D}, url)
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["D.safetensors", "G_ema.safetensors", "network.json"]
    _assert_round_trip(url, G, D, index)
    # A single self-describing weights file loads on its own, and knows which network it holds.
    G3 = load_network(tmp_path / "net" / "G_ema.safetensors")
    assert G3.fingerprint == network_fingerprint(G)
    with pytest.raises(NetworkFormatError, match="'D'"):
        load_network(tmp_path / "net" / "D.safetensors", key="G_ema")
    with pytest.raises(NetworkFormatError, match="'G'"):
        load_network(url, key="G")


def test_save_and_load_round_trip_in_memory_filesystem() -> None:
    G, D = _small_generator("R16-rgba-cond", seed=3), _small_discriminator(seed=3)
    root = f"sg3archive-tests-{uuid.uuid4().hex}"
    url = f"memory://{root}/net"
    fs = fsspec.filesystem("memory")
    try:
        index = save_networks({"G_ema": G, "D": D}, url)
        assert fs.exists(f"/{root}/net/network.json")
        _assert_round_trip(url, G, D, index)
    finally:
        if fs.exists(f"/{root}"):
            fs.rm(f"/{root}", recursive=True)


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    G, D = _small_generator("T16-gray-uncond"), _small_discriminator()
    url = str(tmp_path / "net")
    save_networks({"G_ema": G, "D": D}, url)
    path = tmp_path / "net" / "G_ema.safetensors"
    data = bytearray(path.read_bytes())
    data[-6] ^= 0x04  # one bit of a float in the tensor data (the header is at the start)
    path.write_bytes(bytes(data))
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        load_network(path)
    with pytest.raises(FingerprintMismatchError):
        load_network(url)
    # The untouched network in the same directory still loads.
    assert load_network(url, key="D").fingerprint == network_fingerprint(D)
    assert issubclass(FingerprintMismatchError, Sg3ArchiveError)


def test_missing_path_is_a_format_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "network-snapshot.pkl"
    with pytest.raises(NetworkFormatError, match=re.escape(str(missing))):
        load_network(missing)
    with pytest.raises(NetworkFormatError, match=re.escape(str(missing))):
        load_network(str(missing), key="D")
    with pytest.raises(ValueError, match="key"):
        load_network(missing, key="generator")


def test_fast_filtered_lrelu_batched_chunking_path_gives_reference_shapes() -> None:
    """Non-CPU devices take whole batches per chunk; the meta device checks that path's shapes."""
    fu = design_lowpass_filter(24, 4.0, 8.0, 64)
    fd = design_lowpass_filter(12, 5.0, 12.0, 64, radial=True)
    x = torch.empty([3, 20, 38, 38], device="meta")
    out = fast.filtered_lrelu(x, fu.to("meta"), fd.to("meta"), torch.empty([20], device="meta"), up=4, down=2,
                              padding=[-6, -9, -6, -9], clamp=256)
    cpu = fast.filtered_lrelu(torch.zeros([3, 20, 38, 38]), fu, fd, torch.zeros([20]), up=4,
                              down=2, padding=[-6, -9, -6, -9], clamp=256)
    assert out.device.type == "meta" and out.shape == cpu.shape == (3, 20, 52, 52)
