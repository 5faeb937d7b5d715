"""Freshly initialized StyleGAN3 generators in the official configurations (for tests, benchmarks
and the bundled default), with their magnitude statistics calibrated so activations are well scaled.

Random weights make textures, not photos: real use needs a trained network (users bring
NVIDIA's pretrained pickles or their own).
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from tqdm import tqdm

from sg3archive.networks.discriminator import Discriminator
from sg3archive.networks.generator import Generator, SynthesisNetwork

# train.py's settings for each config; channel_base/max are those of the published networks.
CONFIGS: dict[str, dict[str, Any]] = {
    "stylegan3-t": dict(channel_base=32768, channel_max=512),
    "stylegan3-r": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}
MAGNITUDE_EMA_BETA = 0.5 ** (32 / (20 * 1e3))  # train.py's value for batch size 32

# Statistics calibration. A layer's magnitude_ema is the mean square of its input over a batch of
# W samples, and that input depends on the magnitude_ema of every earlier layer, so the layers are
# measured one after another over all samples. Holding every sample's activations between layers
# takes num_samples times the largest layer input (10 GB for stylegan3-r at 256), so each sample
# keeps an activation only while they fit a memory budget and otherwise recomputes from the last
# one it kept (or from W). Each sample runs on one thread (samples in parallel) and its sum of
# squares is taken in float64, so the result depends on neither the budget nor the thread count.
CALIBRATION_SAMPLES = 64
CALIBRATION_MEMORY = 3 << 30  # bytes of activations kept between layers by default
_SUM_SLICE_ELEMENTS = 1 << 20  # float64 elements converted at a time when summing squares
_TRIM_BYTES = 4 << 20  # layer inputs from this size on return freed memory after each sample
_malloc_trim: Callable[[int], int] | None
try:  # glibc: hand freed heap pages back to the system (see _calibrate)
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError, TypeError):
    _malloc_trim = None


def random_generator(
    config: str = "stylegan3-t",
    img_resolution: int = 256,
    *,
    z_dim: int = 512,
    w_dim: int = 512,
    c_dim: int = 0,
    img_channels: int = 3,
    channel_base: int | None = None,
    channel_max: int | None = None,
    mapping_layers: int = 2,
    seed: int = 0,
    calibrate: bool = True,
    calibration_memory: int = CALIBRATION_MEMORY,
    progress: bool = False,
) -> Generator:
    """A generator with random weights from ``seed`` in config ``"stylegan3-t"`` or ``"stylegan3-r"``.

    ``channel_base``/``channel_max`` default to the published values of the config. ``calibrate``
    sets the statistics (see ``calibrate_statistics``, which ``calibration_memory`` bounds in
    bytes); ``progress`` shows its progress bar on stderr.
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; expected one of {sorted(CONFIGS)}")
    kwargs = dict(CONFIGS[config])
    if channel_base is not None:
        kwargs["channel_base"] = channel_base
    if channel_max is not None:
        kwargs["channel_max"] = channel_max
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, [1], generator=generator)))
        G = Generator(
            z_dim=z_dim,
            c_dim=c_dim,
            w_dim=w_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            mapping_kwargs={"num_layers": mapping_layers},
            magnitude_ema_beta=MAGNITUDE_EMA_BETA,
            **kwargs,
        ).eval()
    if calibrate:
        calibrate_statistics(G, seed=seed, memory_budget=calibration_memory, progress=progress)
    return G.requires_grad_(False)


def random_discriminator(
    img_resolution: int,
    *,
    c_dim: int = 0,
    img_channels: int = 3,
    channel_base: int = 32768,
    channel_max: int = 512,
    seed: int = 0,
) -> Discriminator:
    """A StyleGAN2 discriminator with random weights from ``seed`` (mbstd group 4, as train.py)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        D = Discriminator(
            c_dim=c_dim,
            img_resolution=img_resolution,
            img_channels=img_channels,
            channel_base=channel_base,
            channel_max=channel_max,
            block_kwargs={"freeze_layers": 0},
            epilogue_kwargs={"mbstd_group_size": 4},
        )
    return D.eval().requires_grad_(False)


def plan_calibration(sizes: list[int], num_samples: int, memory_budget: int) -> list[list[int]]:
    """Which activation each sample keeps after each layer is measured, within ``memory_budget``.

    ``sizes[i]`` is the size in bytes of one sample's input to layer ``i``. Returns ``kept`` with
    ``kept[i][s]`` the layer whose input sample ``s`` holds after layer ``i`` is measured (-1:
    none, it restarts from its W). Greedy in sample order: each sample moves as far forward as
    the budget allows, to the layer just measured if it fits, else to the furthest one it passed.
    """
    held = [-1] * num_samples
    used = 0
    kept = []
    for i in range(len(sizes)):
        for s in range(num_samples):
            j = held[s]
            freed = sizes[j] if j >= 0 else 0
            for k in range(i, j, -1):
                if used - freed + sizes[k] <= memory_budget:
                    used += sizes[k] - freed
                    held[s] = k
                    break
        kept.append(list(held))
    return kept


def _input_bytes(S: SynthesisNetwork) -> list[int]:
    """Bytes of one sample's float32 input to each synthesis layer."""
    layers = [getattr(S, name) for name in S.layer_names]
    return [4 * layer.in_channels * int(layer.in_size[0]) * int(layer.in_size[1]) for layer in layers]


def _sum_of_squares(x: torch.Tensor) -> float:
    """Sum of ``x**2`` in float64 (squares of float32 values are exact there), in channel slices."""
    step = max(1, _SUM_SLICE_ELEMENTS // max(1, x[0, 0].numel()))
    parts = [x[:, c0 : c0 + step].to(torch.float64).square().sum().item() for c0 in range(0, x.shape[1], step)]
    return math.fsum(parts)


@torch.no_grad()
def calibrate_statistics(
    G: Generator,
    num_samples: int = CALIBRATION_SAMPLES,
    seed: int = 0,
    *,
    memory_budget: int = CALIBRATION_MEMORY,
    workers: int | None = None,
    progress: bool = False,
) -> None:
    """Set ``w_avg`` to the mean mapped W and each layer's ``magnitude_ema`` to its input's mean square.

    These are the statistics training would have accumulated; without them a fresh network's
    activations grow or shrink layer by layer. Both are means over ``num_samples`` W from ``seed``;
    a layer's input is computed with the earlier layers already calibrated.

    Args:
        memory_budget: bytes of per-sample activations kept from one layer to the next; a smaller
            budget recomputes more (slower), never changes the result. It also caps ``workers``
            (one per three largest layer inputs that fit in it), the samples in flight.
        workers: samples computed at once, each on one thread (default: ``torch.get_num_threads()``).
            The result does not depend on it; torch's thread count is restored afterwards.
        progress: show a progress bar on stderr (counted in single-sample layer evaluations).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    threads = torch.get_num_threads()
    workers = min(num_samples, threads if workers is None else workers)
    workers = max(1, min(workers, memory_budget // (3 * max(_input_bytes(G.synthesis)))))
    torch.set_num_threads(1)  # one thread per sample: bit-identical results for any thread count
    try:
        _calibrate(G, num_samples, seed, memory_budget, workers, progress)
    finally:
        torch.set_num_threads(threads)


def _calibrate(G: Generator, num_samples: int, seed: int, memory_budget: int, workers: int, progress: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn([num_samples, G.z_dim], generator=generator)
    c = None
    if G.c_dim > 0:
        c = torch.nn.functional.one_hot(torch.randint(0, G.c_dim, [num_samples], generator=generator), G.c_dim).float()
    ws = G.mapping(z, c)  # one batch on one thread: deterministic
    G.mapping.w_avg.copy_(ws[:, 0].mean(dim=0))  # float32, as the bundled network's w_avg
    ws = ws.unbind(dim=1)  # ws[0] feeds the input, ws[k + 1] layer k

    S = G.synthesis
    layers = [getattr(S, name) for name in S.layer_names]
    sizes = _input_bytes(S)
    plan = plan_calibration(sizes, num_samples, memory_budget)
    held: list[tuple[int, torch.Tensor] | None] = [None] * num_samples
    # One step = one sample through one layer (or through the Fourier input).
    total = sum(i - (plan[i - 1][s] if i > 0 else -1) for i in range(len(layers)) for s in range(num_samples))
    bar = tqdm(total=total, desc="calibrate", unit="step", disable=None if progress else True, leave=False)
    lock = threading.Lock()

    @torch.no_grad()  # grad mode is per thread: the pool's threads do not inherit the caller's
    def measure(i: int, s: int) -> float:
        """Sum of squares of sample ``s``'s input to layer ``i``; keeps what the plan says."""
        entry = held[s]
        k, x = entry if entry is not None else (-1, None)
        start, target = k, plan[i][s]
        kept = held[s] if target == k else None
        if k < 0:
            x = S.input(ws[0][s : s + 1])
            k = 0
            kept = (0, x) if target == 0 else kept
        while k < i:
            x = layers[k](x, ws[k + 1][s : s + 1], impl=S.impl)
            k += 1
            kept = (k, x) if target == k else kept
        held[s] = kept
        assert x is not None  # taken from held[s] or computed from W above
        square_sum = _sum_of_squares(x)
        del x
        if _malloc_trim is not None and sizes[i] >= _TRIM_BYTES:
            # Kept activations between short-lived buffers fragment glibc's heaps; without this,
            # freed pages stay resident and a 3 GiB budget ran at 7 GB resident (stylegan3-r, 256).
            _malloc_trim(0)
        with lock:
            bar.update(i - start)
        return square_sum

    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1 else None
    try:
        for i, layer in enumerate(layers):
            if pool is None:
                sums = [measure(i, s) for s in range(num_samples)]
            else:
                sums = list(pool.map(functools.partial(measure, i), range(num_samples)))
            mean = math.fsum(sums) / (num_samples * (sizes[i] // 4))
            layer.magnitude_ema.copy_(torch.tensor(mean, dtype=torch.float64))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
