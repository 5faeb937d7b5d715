"""``sg3archive.load_network`` end to end: official pickles (safe or hostile), keys, formats, errors."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest

import sg3archive
from sg3archive.checkpoints.network_file import save_networks
from sg3archive.errors import NetworkFormatError, UnsafePickleError


class _Call:
    """Pickles as ``fn(*args)``: what a hostile file does to run code at load time."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(tmp_path: Path, fn, *args) -> Path:
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Call(fn, *args), "D": None}, protocol=4))
    return path


@pytest.mark.parametrize(
    "fn, args, named",
    [
        (os.system, ("touch {marker}",), "system"),
        (builtins.eval, ("open({marker!r}, 'w').close()",), "builtins.eval"),
        (subprocess.Popen, (["touch", "{marker}"],), "subprocess.Popen"),
        (builtins.exec, ("open({marker!r}, 'w').close()",), "builtins.exec"),
    ],
)
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path: Path, fn, args, named: str) -> None:
    marker = str(tmp_path / "executed")
    args = tuple([a.format(marker=marker) for a in arg] if isinstance(arg, list) else arg.format(marker=marker)
                 for arg in args)
    path = _hostile(tmp_path, fn, *args)
    with pytest.raises(UnsafePickleError) as info:
        sg3archive.load_network(path)
    message = str(info.value)
    assert named in message and str(path) in message and "nothing" in message
    assert not Path(marker).exists()


def _fake_official_modules(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Importable stand-ins for the names official snapshots reference, so this test can write one."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: the file is only written here
        raise AssertionError

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    return persistence


class _Record:
    def __init__(self, persistence, class_name: str, modules: dict, init_kwargs: dict):
        self.reduce = (persistence._reconstruct_persistent_obj, ({
            "type": "class", "version": 6, "module_src": "# omitted", "class_name": class_name,
            "state": {"_parameters": {}, "_buffers": {}, "_modules": modules, "_init_args": (), "_init_kwargs": init_kwargs},
        },))

    def __reduce__(self):
        return self.reduce


def test_stylegan2_generator_is_refused_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    persistence = _fake_official_modules(monkeypatch)
    block = _Record(persistence, "SynthesisBlock", {}, {})
    synthesis = _Record(persistence, "SynthesisNetwork", {"b4": block}, {})
    generator = _Record(persistence, "Generator", {"synthesis": synthesis},
                        {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 16, "img_channels": 3})
    path = tmp_path / "sg2.pkl"
    path.write_bytes(pickle.dumps({"G_ema": generator}, protocol=4))
    with pytest.raises(NetworkFormatError, match="not a StyleGAN3 generator"):
        sg3archive.load_network(path)


def test_g_and_g_ema_and_d_are_distinguished(sg3_reference_dir: Path) -> None:
    pkl = sg3_reference_dir / "t64" / "network-snapshot.pkl"
    g_ema, g, d = (sg3archive.load_network(pkl, key=k) for k in ("G_ema", "G", "D"))
    assert type(g_ema).__name__ == type(g).__name__ == "Generator" and type(d).__name__ == "Discriminator"
    assert g_ema.fingerprint != g.fingerprint
    assert not g_ema.training and not any(p.requires_grad for p in g_ema.parameters())


def test_unknown_key_and_missing_network(sg3_reference_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key must be one of"):
        sg3archive.load_network(sg3_reference_dir / "t64" / "network-snapshot.pkl", key="generator")
    G = sg3archive.load_network(sg3_reference_dir / "t64" / "network-snapshot.pkl")
    save_networks({"G_ema": G}, str(tmp_path / "net"))
    with pytest.raises(NetworkFormatError, match=r"has no network 'D'.*G_ema"):
        sg3archive.load_network(tmp_path / "net", key="D")
    with pytest.raises(NetworkFormatError, match="holds 'G_ema', not 'D'"):
        sg3archive.load_network(tmp_path / "net" / "G_ema.safetensors", key="D")


def test_other_files_get_format_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NetworkFormatError):
        sg3archive.load_network(tmp_path / "notes.txt")
    (tmp_path / "ckpt.pt").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(NetworkFormatError, match="zip archive"):
        sg3archive.load_network(tmp_path / "ckpt.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NetworkFormatError, match="network.json"):
        sg3archive.load_network(tmp_path / "empty")
