"""Gradients through the fast synthesis ops (``sg3archive.ops.fast_autograd``) against autograd
through the reference path: the ops alone and the layers of full-size StyleGAN3-T and -R
networks at 256² in float64, whole networks (the official-code t64/r64 fixtures) as they run,
in float32. (In float32 the two paths round differently, and where an up-sampled value sits
next to 0 the leaky ReLU's slope can flip: whole full-size networks in float32 are compared by
``benchmarks/gradients.py``.)

The fast ops keep one tensor per op and rebuild the rest during the backward pass; these tests
hold that the gradients are nonetheless those of the reference definition, w.r.t. W+, the
weights, the biases and the styles, and that an in-place change of a tensor the backward pass
rebuilds from raises, as autograd's own check does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sg3archive.networks.generator import Generator
from sg3archive.networks.presets import random_generator
from sg3archive.ops import fast, reference
from sg3archive.ops.filters import design_lowpass_filter
from tests._reference import reference_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def _probe(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A fixed, non-trivial output gradient (no two entries alike)."""
    return torch.sin(torch.arange(int(torch.Size(shape).numel()), dtype=dtype) * 0.37).reshape(shape)


def _grads(fn, args: tuple, inputs: list[torch.Tensor], **kwargs) -> list[torch.Tensor]:
    """Gradients of ``<probe, fn(*args, **kwargs)>`` w.r.t. ``inputs``."""
    out = fn(*args, **kwargs)
    return list(torch.autograd.grad(out, inputs, _probe(out.shape, out.dtype)))


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_modulated_conv_gradients_equal_the_reference_in_float64(demodulate: bool, weight_grad: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    dt = torch.float64
    x = torch.randn([3, 8, 11, 11], generator=gen, dtype=dt).requires_grad_(True)
    weight = torch.randn([6, 8, 3, 3], generator=gen, dtype=dt).requires_grad_(weight_grad)
    styles = torch.randn([3, 8], generator=gen, dtype=dt).requires_grad_(True)
    gain = torch.tensor(0.8, dtype=dt).requires_grad_(True)
    inputs = [x, styles, gain] + ([weight] if weight_grad else [])
    found = [_grads(ops.modulated_conv2d, (x, weight, styles, demodulate, 1, gain), inputs) for ops in (fast, reference)]
    for name, a, b in zip(["x", "styles", "input_gain", "weight"], *found):
        assert _rel(a, b) < 1e-12, name


@pytest.mark.parametrize(("up", "down", "radial"), [(2, 2, False), (4, 2, False), (2, 2, True), (4, 2, True), (2, 1, False)])
def test_filtered_lrelu_gradients_equal_the_reference_in_float64(up: int, down: int, radial: bool) -> None:
    """Separable and radial down filters, both up factors, a clamp that cuts, a bias, two samples."""
    gen = torch.Generator().manual_seed(1)
    dt = torch.float64
    rate = 32 * up
    fu = design_lowpass_filter(6 * up, 10, 6, rate).to(dt)
    fd = None if down == 1 else design_lowpass_filter(6 * down, 10, 6, rate, radial=radial).to(dt)
    x = (2 * torch.randn([2, 12, 14, 14], generator=gen, dtype=dt)).requires_grad_(True)
    b = torch.randn([12], generator=gen, dtype=dt).requires_grad_(True)
    args = dict(up=up, down=down, padding=[11, 10, 9, 12], gain=1.4, slope=0.2, clamp=2.5)
    found = [_grads(ops.filtered_lrelu, (x, fu, fd, b), [x, b], **args) for ops in (fast, reference)]
    for name, a, c in zip(["x", "b"], *found):
        assert _rel(a, c) < 1e-12, name
    # The clamp cuts somewhere (or its gradient would not be tested).
    unclamped = _grads(fast.filtered_lrelu, (x, fu, fd, b), [x], **{**args, "clamp": None})[0]
    assert _rel(unclamped, found[0][0]) > 1e-3


def _fixture_generator(root: Path, folder: str) -> Generator:
    ref = reference_folder(root, folder)
    G = Generator(**ref["G_kwargs"])
    G.load_state_dict(load_file(ref["dir"] / "G_state.safetensors"), strict=True)
    return G.eval()


def _network_grads(G: Generator, ws: torch.Tensor, impl: str, weights: bool) -> dict[str, torch.Tensor]:
    G.requires_grad_(weights)
    ws = ws.detach().clone().requires_grad_(True)
    img = G.synthesis(ws, impl=impl)
    params = {k: p for k, p in G.synthesis.named_parameters()} if weights else {}
    grads = torch.autograd.grad(img, [ws, *params.values()], _probe(img.shape, img.dtype), allow_unused=True)
    G.requires_grad_(False)
    return {"ws": grads[0], **{k: g for k, g in zip(params, grads[1:]) if g is not None}}


@pytest.mark.parametrize("folder", ["t64", "r64"])
def test_network_gradients_match_the_reference_path_on_the_fixtures(sg3_reference_dir: Path, folder: str) -> None:
    """W+ and every synthesis weight, bias and affine: relative error ≤ 1e-4 (float32)."""
    G = _fixture_generator(sg3_reference_dir, folder)
    ws = reference_folder(sg3_reference_dir, folder)["io"]["ws_psi0.7"]
    fast_grads = _network_grads(G, ws, "fast", weights=True)
    ref_grads = _network_grads(G, ws, "reference", weights=True)
    assert fast_grads.keys() == ref_grads.keys() and len(fast_grads) > 40
    errors = {k: _rel(fast_grads[k], ref_grads[k]) for k in ref_grads if ref_grads[k].norm() > 0}
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= 1e-4, f"{worst}: {errors[worst]:.2e}"


@pytest.fixture(scope="module")
def full_size() -> dict[str, Generator]:
    return {c: random_generator(c, 256, seed=3, calibrate=False) for c in ("stylegan3-t", "stylegan3-r")}


# Layers of a 256² network: the first (up 2), the first that grows the image (up 4) and ToRGB
# (the indices hold for both configs). The critically sampled layers at 256² cost minutes in
# float64 here; the fixtures' and the ops' tests cover their kind.
FULL_SIZE_LAYERS = [0, 3, 14]


@pytest.mark.parametrize("config", ["stylegan3-t", "stylegan3-r"])
def test_full_size_layer_gradients_match_the_reference(full_size: dict[str, Generator], config: str) -> None:
    """Layers of a full-size network at 256² (the official channel counts, filters and padding),
    in float64: the gradients w.r.t. the layer input, its w, weight, bias and affine agree."""
    S = full_size[config].synthesis
    gen = torch.Generator().manual_seed(4)
    for index in FULL_SIZE_LAYERS:
        layer = getattr(S, S.layer_names[index]).double().requires_grad_(True)
        x = torch.randn([1, layer.in_channels, int(layer.in_size[1]), int(layer.in_size[0])], generator=gen,
                        dtype=torch.float64).requires_grad_(True)
        w = torch.randn([1, S.w_dim], generator=gen, dtype=torch.float64).requires_grad_(True)
        inputs = [x, w, layer.weight, layer.bias, layer.affine.weight, layer.affine.bias]
        found = [_grads(layer, (x, w), inputs, impl=impl) for impl in ("fast", "reference")]
        layer.float().requires_grad_(False)
        for name, a, b in zip(["x", "w", "weight", "bias", "affine.weight", "affine.bias"], *found):
            assert _rel(a, b) <= 1e-10, f"{S.layer_names[index]} {name}: {_rel(a, b):.2e}"


@pytest.mark.parametrize("config", ["stylegan3-t", "stylegan3-r"])
def test_fast_backward_keeps_one_tensor_per_op(config: str) -> None:
    """What autograd keeps for the backward pass: about one layer-output-sized tensor per layer
    (the reference path keeps every up-sampled intermediate, several times more)."""
    G = random_generator(config, 64, channel_base=2048, channel_max=64, seed=0, calibrate=False)
    ws = G.mapping(torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(0)), None).detach()

    def kept_bytes(impl: str) -> int:
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() > 4096:  # activations, not the weights or styles
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            G.synthesis(ws.clone().requires_grad_(True), impl=impl)
        return sum(storages.values())

    S = G.synthesis
    outputs = sum(4 * layer.out_channels * int(layer.out_size[0] * layer.out_size[1])
                  for layer in (getattr(S, n) for n in S.layer_names))
    assert kept_bytes("fast") < 1.5 * outputs < kept_bytes("reference") / 3


@pytest.mark.parametrize("kernel", [3, 1])
def test_changing_a_rebuilt_tensor_in_place_raises(kernel: int) -> None:
    """The backward pass rebuilds a tensor instead of keeping it (a 3×3 convolution's input, a 1×1
    convolution's output); changing it in place in between would silently change the gradient,
    so it raises instead."""
    gen = torch.Generator().manual_seed(5)
    fu = design_lowpass_filter(12, 8, 4, 64)
    x = torch.randn([1, 8, 12, 12], generator=gen).requires_grad_(True)
    y = fast.filtered_lrelu(x * 1.0, fu, fu, None, up=2, down=2, padding=[11, 10, 11, 10])
    z = fast.modulated_conv2d(y, torch.randn([8, 8, kernel, kernel], generator=gen),
                              torch.randn([1, 8], generator=gen), padding=kernel // 2)
    out = fast.filtered_lrelu(z, fu, fu, None, up=2, down=2, padding=[11, 10, 11, 10])
    with torch.no_grad():  # autograd keeps no copy of the rebuilt tensor: only the rebuild can notice
        (y if kernel == 3 else z).mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


@pytest.fixture(scope="module")
def small() -> Generator:
    return random_generator("stylegan3-r", 64, channel_base=2048, channel_max=64, seed=2)


def _ws_grad(G: Generator, ws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = ws.clone().requires_grad_(True)
    img = G.synthesis(w)
    return img.detach(), torch.autograd.grad(img, w, _probe(img.shape, img.dtype))[0]


def test_activation_checkpointing_changes_nothing_but_when_layers_run(small: Generator) -> None:
    ws = small.mapping(torch.randn([2, small.z_dim], generator=torch.Generator().manual_seed(1)), None).detach()
    img, grad = _ws_grad(small, ws)
    small.synthesis.checkpoint_resolution = 32
    try:
        img_ck, grad_ck = _ws_grad(small, ws)
    finally:
        small.synthesis.checkpoint_resolution = 0
    assert torch.equal(img, img_ck) and _rel(grad_ck, grad) < 1e-6


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_runs_forward_and_backward_with_float32_output(small: Generator, precision: str) -> None:
    """Autocast reaches the fast ops' backward passes too (no dtype clash); the output stays float32."""
    ws = small.mapping(torch.randn([2, small.z_dim], generator=torch.Generator().manual_seed(1)), None).detach()
    img, grad = _ws_grad(small, ws)
    small.synthesis.precision = precision
    try:
        img_mp, grad_mp = _ws_grad(small, ws)
    finally:
        small.synthesis.precision = "float32"
    assert img_mp.dtype == torch.float32 and grad_mp.dtype == torch.float32
    assert torch.isfinite(grad_mp).all() and 0 < (img_mp - img).abs().max() < 0.1
    assert float(torch.nn.functional.cosine_similarity(grad_mp.flatten(), grad.flatten(), dim=0)) > 0.5


def test_unknown_precision_is_refused(small: Generator) -> None:
    small.synthesis.precision = "float8"
    try:
        with pytest.raises(ValueError, match="unknown precision 'float8'"):
            small.synthesis(torch.zeros([1, small.num_ws, small.w_dim]))
    finally:
        small.synthesis.precision = "float32"


def test_losses_pool_large_images_to_the_loss_resolution() -> None:
    from sg3archive.training.trainer import pooled

    x = torch.arange(2 * 3 * 100 * 60, dtype=torch.float32).reshape(2, 3, 100, 60)
    assert pooled(x, 0) is x and pooled(x, 100) is x
    y = pooled(x, 40)  # factor 3 (the smallest that brings 100 to <= 40), partial windows averaged
    assert y.shape == (2, 3, 34, 20) and torch.allclose(y[0, 0, 0, 0], x[0, 0, :3, :3].mean())
