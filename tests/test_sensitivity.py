"""Layer sensitivities of a generator, and their use as codec bit-allocation weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sg3archive
from sg3archive.codec import CodecError, LatentCodec
from sg3archive.networks.sensitivity import layer_sensitivity

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sensitivity_weights_steer_the_auto_allocation(sg3_reference_dir: Path) -> None:
    G = sg3archive.load_network(sg3_reference_dir / "t64" / "network-snapshot.pkl")
    with torch.no_grad():
        ws = G.mapping(torch.randn(300, G.z_dim, generator=torch.Generator().manual_seed(0)), None, truncation_psi=0.7)
    ws = ws + 0.02 * torch.randn(ws.shape, generator=torch.Generator().manual_seed(1))
    weights = layer_sensitivity(G, ws[:8])
    assert weights.shape == (16,) and (weights > 0).all() and np.isfinite(weights).all()
    # The image reacts to the synthesis layers' W by different amounts; the measure must show it.
    assert weights.max() > 2 * weights.min()

    codec = LatentCodec.fit(ws, "auto", target_mse=1e-3, layer_weights=weights)
    bits = np.array(codec.bits)
    heavy, light = int(weights.argmax()), int(weights.argmin())
    assert bits[heavy] > bits[light]
    assert bits[heavy] - bits[light] == pytest.approx(0.5 * np.log2(weights[heavy] / weights[light]), abs=0.01)
    assert torch.equal(codec.decompress(codec.compress(ws[:5])), codec.quantize(ws[:5]))

    with pytest.raises(CodecError, match="layer_weights"):
        LatentCodec.fit(ws, "auto", target_mse=1e-3, layer_weights=[1.0] * 15)
    with pytest.raises(CodecError, match="layer_weights"):
        LatentCodec.fit(ws, "balanced", layer_weights=weights)
