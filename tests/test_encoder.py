"""Image → W+ encoders: shapes, initialization, gradients, sampling, the hierarchy, rebuilding, fitting."""

from __future__ import annotations

import json

import pytest
import torch

from sg3archive.errors import Sg3ArchiveError
from sg3archive.networks.encoder import (
    ENCODER_KINDS,
    EncoderError,
    EncoderOutput,
    HierarchicalEncoder,
    SingleScaleEncoder,
    build_encoder,
    encoder_kind,
    hierarchy_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# The bundled model's size: StyleGAN3's 16 W+ vectors, a small W, 64x64 images, quarter width.
TINY = dict(num_ws=16, w_dim=128, img_resolution=64, width=0.25)
SMALL = dict(num_ws=8, w_dim=32, img_resolution=32, width=0.25)


def _images(n: int, resolution: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, channels, resolution, resolution], generator=g) * 2 - 1


def _build(kind: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_encoder(kind, **kwargs)


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize(
    "config, batch",
    [
        (dict(num_ws=16, w_dim=512, img_resolution=256), 1),  # StyleGAN3 at 256², full width.
        (TINY, 3),
        (dict(num_ws=14, w_dim=64, img_resolution=128, width=0.125), 2),
        (dict(num_ws=3, w_dim=16, img_resolution=32, width=0.125, img_channels=1), 2),
        (dict(SMALL, instance_stats=False), 1),
    ],
    ids=["16x512@256", "tiny", "14x64@128", "3x16@32-gray", "no-stats"],
)
def test_output_shapes(kind: str, config: dict, batch: int) -> None:
    encoder = _build(kind, **config)
    x = _images(batch, config["img_resolution"], channels=config.get("img_channels", 3))
    with torch.no_grad():
        out = encoder(x)
    assert isinstance(out, EncoderOutput)
    expected = (batch, config["num_ws"], config["w_dim"])
    for field in out:
        assert field.shape == expected and field.dtype == torch.float32 and torch.isfinite(field).all()
    assert (encoder.num_ws, encoder.w_dim, encoder.img_resolution) == expected[1:] + (config["img_resolution"],)


def test_single_scale_trunk_follows_the_guide_and_stops_at_4x4() -> None:
    for resolution, convs in [(8, 1), (64, 4), (256, 6), (1024, 6)]:
        encoder = SingleScaleEncoder(num_ws=2, w_dim=8, img_resolution=resolution, width=0.125)
        assert encoder.trunk.num_convs == convs
        assert encoder.trunk.out_size == max(4, resolution >> 6)
    blocks = SingleScaleEncoder(num_ws=16, w_dim=512, img_resolution=256).trunk.blocks
    assert [b.conv.out_channels for b in blocks] == [64, 128, 256, 512, 512, 512]
    assert [b.norm for b in blocks] == [False] + [True] * 5  # Instance norm from Conv2 on.
    assert all(b.conv.stride == (2, 2) and b.conv.kernel_size == (3, 3) for b in blocks)


def test_hierarchical_levels_read_an_image_pyramid() -> None:
    wide = dict(num_ws=16, w_dim=32, img_resolution=256, width=0.125)
    for config, sizes in [(TINY, [16, 32, 64]), (wide, [64, 128, 256])]:
        encoder = HierarchicalEncoder(**config)
        assert [t.resolution for t in encoder.trunks] == sizes
        # Every level ends at the same map size and width: a map's width depends on its size only.
        assert len({(t.out_size, t.out_features) for t in encoder.trunks}) == 1


def test_tiny_encoders_fit_the_bundle() -> None:
    counts = {kind: _num_params(build_encoder(kind, **TINY)) for kind in ENCODER_KINDS}
    assert max(counts.values()) <= 2_500_000, counts


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_initial_mean_is_w_avg(kind: str) -> None:
    w_avg = 3 * torch.randn([TINY["w_dim"]], generator=torch.Generator().manual_seed(5))
    encoder = _build(kind, **TINY, w_avg=w_avg, logvar_init=-3.0)
    with torch.no_grad():
        out = encoder(_images(4, TINY["img_resolution"]))
    assert (out.mean - w_avg).abs().max() < 0.05
    assert (out.logvar + 3.0).abs().max() < 0.05
    assert torch.equal(encoder.w_avg, w_avg)  # A copy, in float32.


@pytest.mark.parametrize("kind", ENCODER_KINDS)
@pytest.mark.parametrize("instance_stats", [True, False])
def test_gradients_reach_every_parameter(kind: str, instance_stats: bool) -> None:
    encoder = _build(kind, **SMALL, instance_stats=instance_stats)
    out = encoder(_images(2, SMALL["img_resolution"]))
    g = torch.Generator().manual_seed(1)
    # Random weights, so no gradient cancels by symmetry.
    loss = sum((field * torch.randn(field.shape, generator=g)).sum() for field in out)
    loss.backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and param.grad.abs().max() > 0, name


def test_sample_is_reparameterized_and_seeded() -> None:
    mean = torch.randn([2, 5, 7], requires_grad=True)
    logvar = torch.full([2, 5, 7], 2 * torch.log(torch.tensor(3.0)).item(), requires_grad=True)  # std 3
    out = EncoderOutput(mean, logvar)
    a = out.sample(torch.Generator().manual_seed(11))
    b = out.sample(torch.Generator().manual_seed(11))
    c = out.sample(torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    eps = (a - mean) / 3
    assert torch.allclose(eps, torch.randn([2, 5, 7], generator=torch.Generator().manual_seed(11)), atol=1e-5)
    (a * 2).sum().backward()
    assert torch.allclose(mean.grad, torch.full_like(mean, 2.0))
    assert torch.allclose(logvar.grad, 2 * 0.5 * 3 * eps, atol=1e-5)  # d/dlogvar of exp(logvar/2)·eps
    wide = EncoderOutput(torch.zeros([4000, 1, 1]), torch.zeros([4000, 1, 1])).sample(torch.Generator().manual_seed(0))
    assert abs(wide.std().item() - 1) < 0.05


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_sample_flows_into_the_encoder(kind: str) -> None:
    encoder = _build(kind, **SMALL)
    ws = encoder(_images(2, SMALL["img_resolution"])).sample(torch.Generator().manual_seed(0))
    ws.square().sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_hierarchy_groups() -> None:
    assert hierarchy_groups(14) == [list(range(0, 4)), list(range(4, 9)), list(range(9, 14))]  # The guide's split.
    assert hierarchy_groups(16) == [list(range(0, 5)), list(range(5, 10)), list(range(10, 16))]
    assert hierarchy_groups(3) == [[0], [1], [2]]
    for num_ws in range(3, 41):
        groups = hierarchy_groups(num_ws)
        assert [i for g in groups for i in g] == list(range(num_ws)) and all(groups)
        ends = [g[-1] + 1 for g in groups[:2]]
        assert abs(ends[0] / num_ws - 4 / 14) <= 1 / num_ws and abs(ends[1] / num_ws - 9 / 14) <= 1 / num_ws
    with pytest.raises(EncoderError, match="num_ws >= 3"):
        hierarchy_groups(2)


def _means_with_hook(encoder: HierarchicalEncoder, x: torch.Tensor, module: torch.nn.Module, hook) -> torch.Tensor:
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return encoder(x).mean
    finally:
        handle.remove()


def test_finer_groups_are_conditioned_on_coarser_ones() -> None:
    """Changing only what the coarse level sees moves the finer groups; three independent heads would not."""
    encoder = _build("hierarchical", **TINY)
    coarse, medium, fine = (torch.tensor(g) for g in encoder.groups)
    x = _images(2, TINY["img_resolution"])
    with torch.no_grad():
        base = encoder(x).mean
        fine_features = encoder.trunks[2](x)

    seen_by_fine = []
    handle = encoder.trunks[2].register_forward_hook(lambda m, i, out: seen_by_fine.append(out))
    shifted = _means_with_hook(encoder, x, encoder.trunks[0], lambda m, i, out: out + 1.0)
    handle.remove()
    assert torch.equal(seen_by_fine[0], fine_features)  # The fine level saw the same pixels and features.
    moved = (shifted - base).abs()
    assert moved[:, coarse].max() > 1e-3
    assert moved[:, medium].max() > 1e-6 and moved[:, fine].max() > 1e-6

    # Through the predicted coarse means alone (the coarse summary left as it was).
    def shift_offset(module, inputs, out):
        return out[0] + 0.5, out[1]

    shifted = _means_with_hook(encoder, x, encoder.heads[0], shift_offset)
    moved = (shifted - base).abs()
    assert torch.allclose(moved[:, coarse], torch.full_like(moved[:, coarse], 0.5), atol=1e-5)
    assert moved[:, medium].max() > 1e-6 and moved[:, fine].max() > 1e-6

    # Information flows one way: what the fine level sees never reaches the coarser groups.
    shifted = _means_with_hook(encoder, x, encoder.trunks[2], lambda m, i, out: out + 1.0)
    assert torch.equal(shifted[:, coarse], base[:, coarse]) and torch.equal(shifted[:, medium], base[:, medium])
    assert (shifted[:, fine] - base[:, fine]).abs().max() > 1e-4

    # Pixel detail that averages out over every 2x2 cell is invisible at R/2 and R/4: it moves the
    # fine group only.
    half = TINY["img_resolution"] // 2
    detail = 0.1 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(half, half)
    with torch.no_grad():
        detailed = encoder(x + detail).mean
    assert torch.allclose(detailed[:, coarse], base[:, coarse], atol=1e-6)
    assert torch.allclose(detailed[:, medium], base[:, medium], atol=1e-6)
    assert (detailed[:, fine] - base[:, fine]).abs().max() > 1e-5


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_init_kwargs_rebuild_the_encoder(kind: str) -> None:
    encoder = _build(kind, **TINY, w_avg=torch.randn([TINY["w_dim"]]), logvar_init=-5.0)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # Away from the initialization a rebuild reproduces.
    kwargs = json.loads(json.dumps(encoder.init_kwargs))
    assert "w_avg" not in kwargs
    assert encoder_kind(encoder) == kind
    rebuilt = _build(encoder_kind(encoder), seed=99, **kwargs)
    assert type(rebuilt) is type(encoder) and rebuilt.init_kwargs == encoder.init_kwargs
    rebuilt.load_state_dict(encoder.state_dict(), strict=True)
    x = _images(2, TINY["img_resolution"])
    with torch.no_grad():
        for a, b in zip(encoder(x), rebuilt(x)):
            assert torch.equal(a, b)


def test_bad_configurations_and_inputs_are_refused() -> None:
    with pytest.raises(EncoderError, match="unknown encoder kind"):
        build_encoder("pyramid", **TINY)
    with pytest.raises(EncoderError, match="not an sg3archive encoder"):
        encoder_kind(torch.nn.Linear(2, 2))
    with pytest.raises(EncoderError, match="power of two >= 8"):
        SingleScaleEncoder(num_ws=4, w_dim=8, img_resolution=48)
    with pytest.raises(EncoderError, match="power of two >= 32"):
        HierarchicalEncoder(num_ws=4, w_dim=8, img_resolution=16)
    with pytest.raises(EncoderError, match="w_avg"):
        SingleScaleEncoder(num_ws=4, w_dim=8, img_resolution=16, w_avg=torch.zeros([9]))
    with pytest.raises(EncoderError, match="width"):
        SingleScaleEncoder(num_ws=4, w_dim=8, img_resolution=16, width=0)
    encoder = SingleScaleEncoder(**SMALL)
    for shape in ([1, 3, 64, 64], [3, 32, 32], [1, 1, 32, 32], [0, 3, 32, 32]):
        with pytest.raises(EncoderError, match="resize nothing"):
            encoder(torch.zeros(shape))
    assert issubclass(EncoderError, Sg3ArchiveError) and issubclass(EncoderError, ValueError)


def test_any_float_input_is_computed_in_float32() -> None:
    encoder = _build("hierarchical", **SMALL)
    x = _images(1, SMALL["img_resolution"])
    with torch.no_grad():
        a, b = encoder(x).mean, encoder(x.double()).mean
    assert b.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_overfits_a_fixed_batch(kind: str) -> None:
    encoder = _build(kind, **TINY)
    g = torch.Generator().manual_seed(1)
    x = _images(4, TINY["img_resolution"], seed=2)
    target = torch.randn([4, TINY["num_ws"], TINY["w_dim"]], generator=g)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (encoder(x).mean - target).square().mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = (encoder(x).mean - target).square().mean().item()
    # Fitting the batch mean alone would leave 3/4 of the initial error: this needs per-image features.
    assert final < losses[0] / 20, (losses[0], final)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ENCODER_KINDS)
def test_runs_on_cuda_like_on_cpu(kind: str) -> None:
    encoder = _build(kind, **TINY, w_avg=torch.randn([TINY["w_dim"]]))
    x = _images(3, TINY["img_resolution"])
    with torch.no_grad():
        expected = encoder(x)
        got = encoder.cuda()(x.cuda())
    assert got.mean.device.type == "cuda"
    for a, b in zip(expected, got):
        assert torch.allclose(a, b.cpu(), atol=1e-3)
    ws = got.sample(torch.Generator(device="cuda").manual_seed(0))
    assert ws.device.type == "cuda" and ws.shape == got.mean.shape
