"""The StyleGAN2 discriminator (as StyleGAN3 trains it) against NVIDIA's official outputs.

The discriminator reads the reference images ``img_psi0.7`` / ``img_psi1`` from io.safetensors
(official generator outputs), so these tests do not depend on our generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _reference import reference_folder
from safetensors.torch import load_file

from sg3archive import load_network
from sg3archive.checkpoints.fingerprint import network_fingerprint, weights_fingerprint
from sg3archive.networks import Discriminator
from sg3archive.networks.build import build_network

FOLDERS = ["t64", "r64"]
SOURCES = ["pickle", "safetensors"]
ATOL = 1e-4
BLOCKS = ["b64", "b32", "b16", "b8"]
EPILOGUE = ["mbstd", "conv", "fc", "out"]

_CACHE: dict[tuple, object] = {}


pytestmark = pytest.mark.usefixtures("one_thread")


def _discriminator(root: Path, folder: str, source: str) -> torch.nn.Module:
    key = ("D", root, folder, source)
    if key not in _CACHE:
        ref = reference_folder(root, folder)
        if source == "pickle":
            D = load_network(ref["dir"] / "network-snapshot.pkl", key="D")
        else:
            D = Discriminator(**ref["D_kwargs"])
            D.load_state_dict(load_file(ref["dir"] / "D_state.safetensors"), strict=True)
            D.eval().requires_grad_(False)
        _CACHE[key] = D
    return _CACHE[key]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {list(actual.shape)} != {list(expected.shape)}"
    assert actual.dtype == torch.float32 and torch.isfinite(actual).all(), what
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.3g}"


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("folder", FOLDERS)
def test_discriminator_matchesreference_folder(sg3_reference_dir: Path, folder: str, source: str) -> None:
    io = reference_folder(sg3_reference_dir, folder)["io"]
    D = _discriminator(sg3_reference_dir, folder, source)
    assert isinstance(D, Discriminator) and not D.training
    assert D.block_resolutions == [64, 32, 16, 8]

    captured: dict[str, torch.Tensor] = {}
    handles = [
        getattr(D.b4, name).register_forward_hook(
            lambda m, i, o, name=name: captured.__setitem__(name, o.detach().clone())
        )
        for name in EPILOGUE
    ]
    try:
        with torch.no_grad():
            logits, features = D(io["img_psi0.7"], io["c"], return_features=True)
    finally:
        for handle in handles:
            handle.remove()

    assert len(features) == len(BLOCKS)
    for block, feature in zip(BLOCKS, features):
        _assert_close(feature, io[f"d_block_{block}_x"], ATOL, f"d_block_{block}_x")
    for name in EPILOGUE:
        _assert_close(captured[name], io[f"d_b4_{name}"], ATOL, f"d_b4_{name}")
    _assert_close(logits, io["d_logits"], ATOL, "d_logits")
    # The minibatch-stddev channel is one value per group (here the whole batch of 3: one group).
    mbstd = captured["mbstd"][:, -1]
    assert torch.equal(mbstd, mbstd[:1, :1, :1].expand_as(mbstd))

    with torch.no_grad():
        logits_psi1 = D(io["img_psi1"], io["c"])
        logits_plain = D(io["img_psi0.7"], io["c"])
        features_again = D.extract_features(io["img_psi0.7"], io["c"])
    _assert_close(logits_psi1, io["d_logits_img_psi1"], ATOL, "d_logits_img_psi1")
    assert torch.equal(logits_plain, logits)
    assert len(features_again) == len(features)
    assert all(torch.equal(a, b) for a, b in zip(features_again, features))


@pytest.mark.parametrize("folder", FOLDERS)
def test_official_d_state_loads_strict_and_fingerprints_agree(sg3_reference_dir: Path, folder: str) -> None:
    ref = reference_folder(sg3_reference_dir, folder)
    D = Discriminator(**ref["D_kwargs"])
    assert set(D.state_dict()) == set(ref["D_state"])
    D.load_state_dict(ref["D_state"], strict=True)
    assert D.init_kwargs["epilogue_kwargs"] == {"mbstd_group_size": 4}
    from_pickle = _discriminator(sg3_reference_dir, folder, "pickle")
    assert from_pickle.init_kwargs == D.init_kwargs
    assert from_pickle.fingerprint == weights_fingerprint(ref["D_state"]) == network_fingerprint(D)
    assert not any(p.requires_grad for p in from_pickle.parameters())


def _conditional_d(seed: int) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(c_dim=5, img_resolution=32, img_channels=3, channel_base=512, channel_max=32).eval()


def test_conditional_discriminator_uses_labels_and_round_trips() -> None:
    D = _conditional_d(0)
    assert D.block_resolutions == [32, 16, 8]
    assert hasattr(D, "mapping") and D.b4.cmap_dim == 32
    gen = torch.Generator().manual_seed(1)
    img = torch.randn([4, 3, 32, 32], generator=gen)
    c1 = torch.randn([4, 5], generator=gen)
    c2 = torch.randn([4, 5], generator=gen)
    with torch.no_grad():
        out1 = D(img, c1)
        out1_again = D(img, c1)
        out2 = D(img, c2)
        features = D.extract_features(img, c1)
    assert out1.shape == (4, 1) and torch.isfinite(out1).all()
    assert torch.equal(out1, out1_again)
    assert (out1 - out2).abs().max().item() > 1e-4, "the logits ignore the label"
    # The label only enters the projection at the end; the block features do not depend on it.
    with torch.no_grad():
        features2 = D.extract_features(img, c2)
    assert all(torch.equal(a, b) for a, b in zip(features, features2))
    assert [tuple(f.shape) for f in features] == [(4, 32, 16, 16), (4, 32, 8, 8), (4, 32, 4, 4)]

    # state_dict round trip into a differently initialized twin, and a rebuild from init_kwargs.
    twin = _conditional_d(123)
    with torch.no_grad():
        assert (twin(img, c1) - out1).abs().max().item() > 1e-4
    twin.load_state_dict(D.state_dict(), strict=True)
    rebuilt = build_network("Discriminator", D.init_kwargs).eval()
    rebuilt.load_state_dict(D.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(twin(img, c1), out1)
        assert torch.equal(rebuilt(img, c1), out1)
    assert network_fingerprint(twin) == network_fingerprint(D) == network_fingerprint(rebuilt)

    # A conditional discriminator needs its labels.
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        D(img, None)
    with pytest.raises(ValueError, match=r"\[4, 5\]"):
        D(img, c1[:, :3])


def test_wrong_image_shape_is_a_value_error() -> None:
    D = _conditional_d(0)
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        D(torch.zeros([4, 3, 16, 16]), torch.zeros([4, 5]))


def test_minibatch_stddev_batch_not_divisible_by_group_size() -> None:
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
                      epilogue_kwargs={"mbstd_group_size": 4}).eval()
    img = torch.randn([6, 3, 16, 16])
    with pytest.raises(ValueError) as excinfo:
        D(img)
    message = str(excinfo.value)
    assert "batch size 6" in message and "group size 4" in message, message
    # Batches smaller than the group form one group; multiples of the group size work.
    with torch.no_grad():
        assert D(img[:3]).shape == (3, 1)
        assert D(torch.cat([img, img[:2]])).shape == (8, 1)


def test_minibatch_stddev_groups_are_strided_like_the_official_layer() -> None:
    """Sample i belongs to group i % (N // G); the appended channel is that group's mean std."""
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=64, channel_max=8,
                      epilogue_kwargs={"mbstd_group_size": 4})
    x = torch.randn([8, 8, 4, 4]) * torch.arange(1, 9).reshape(8, 1, 1, 1)  # distinct std per sample
    out = D.b4.mbstd(x)
    assert out.shape == (8, 9, 4, 4)
    assert torch.equal(out[:, :8], x)
    for group in ([0, 2, 4, 6], [1, 3, 5, 7]):
        members = x[group].double()
        expected = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean().item()
        for i in group:
            got = out[i, 8]
            assert torch.allclose(got, torch.full_like(got, expected), rtol=1e-5, atol=1e-6), (i, got[0, 0], expected)
    assert not math.isclose(out[0, 8, 0, 0].item(), out[1, 8, 0, 0].item(), rel_tol=1e-3)
