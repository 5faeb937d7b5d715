"""A codec model folder is untrusted input (it travels inside archives): its files are read only
when they are regular files of bounded size inside the folder, and a model whose arrays do not
fit its config is refused even when its recorded hash was recomputed to match (a hash proves
integrity against accidents, not authenticity)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sg3archive.codec import LatentCodec
from sg3archive.codec.errors import CodecError
from sg3archive.codec.model import load_model, save_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("codec") / "codec"
    LatentCodec.fit(torch.randn(256, 16, 32) * 0.5, profile="balanced").save(str(path))
    return path


def crafted(model_dir: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the model with ``changes`` applied and its hash recomputed (what an attacker can do)."""
    model = dataclasses.replace(load_model(str(model_dir)), **changes)
    out = tmp_path / "crafted"
    save_model(model, str(out))
    return out


def test_the_untouched_model_loads(model_dir) -> None:
    assert load_model(str(model_dir)).num_ws == 16


@pytest.mark.parametrize("change", ["class-id", "table", "sigma-nan", "shape", "exponent"])
def test_arrays_that_do_not_fit_the_config_are_refused(model_dir, tmp_path, change) -> None:
    m = load_model(str(model_dir))
    changes = {
        "class-id": lambda: {"classes": np.full_like(m.classes, 10**6)},
        "table": lambda: {"tables": {k: np.where(np.arange(v.size) == 0, v + 1, v).astype(v.dtype)
                                     for k, v in m.tables.items()}},
        "sigma-nan": lambda: {"sigma": np.where(np.arange(m.sigma.size).reshape(m.sigma.shape) == 3, np.nan, m.sigma)},
        "shape": lambda: {"centre": m.centre[:, :4].copy()},
        "exponent": lambda: {"exponent": np.full_like(m.exponent, 4000)},
    }[change]()
    path = crafted(model_dir, tmp_path, **changes)
    with pytest.raises(CodecError, match="incomplete or damaged"):
        load_model(str(path))


def test_files_must_be_regular_and_small(model_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("codec.json", "codec.safetensors"):
        (copy / name).write_bytes((model_dir / name).read_bytes())
    arrays = copy / "codec.safetensors"
    arrays.unlink()
    os.symlink("/dev/zero", arrays)
    with pytest.raises(CodecError, match="symlink|regular file"):
        load_model(str(copy))
    arrays.unlink()
    with open(arrays, "wb") as f:  # sparse: 300 MiB on paper, nothing on disk
        f.truncate(300 << 20)
    with pytest.raises(CodecError, match="larger|MiB"):
        load_model(str(copy))
    (copy / "codec.json").write_text(json.dumps({"pad": " " * (2 << 20)}))
    with pytest.raises(CodecError, match="larger|MiB"):
        load_model(str(copy))
