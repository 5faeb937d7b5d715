"""Loading the official-code reference fixtures (tensors, states, init kwargs), once per folder."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from safetensors.torch import load_file


@functools.cache
def reference_folder(root: Path, folder: str) -> dict:
    """``io``, ``G_state``, ``D_state``, ``G_kwargs``, ``D_kwargs`` and ``dir`` of one fixture folder."""
    d = root / folder

    def tensors(name: str) -> dict:
        # clone(): tensors from load_file are not 64-byte aligned (see the fixture README).
        return {k: v.clone() for k, v in load_file(d / name).items()}

    return {
        "dir": d,
        "io": tensors("io.safetensors"),
        "G_state": tensors("G_state.safetensors"),
        "D_state": tensors("D_state.safetensors"),
        "G_kwargs": json.loads((d / "G_init_kwargs.json").read_text()),
        "D_kwargs": json.loads((d / "D_init_kwargs.json").read_text()),
    }
