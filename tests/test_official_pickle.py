"""Data-only reading of official StyleGAN3 snapshot pickles, and refusal of anything else."""

from __future__ import annotations

import builtins
import collections
import hashlib
import io
import json
import os
import pickle
import pickletools
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sg3archive.checkpoints.official_pickle import EasyDict, PersistentRecord, read_official_pickle
from sg3archive.errors import NetworkFormatError, UnsafePickleError


class _Reduce:
    """Pickles as ``fn(*args)`` (optionally followed by BUILD with ``state``)."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


class _Global:
    """Stands for the global ``module.name`` in pickles these tests write (it need not be importable)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise AssertionError("only ever pickled, never called")


class _ForgingPickler(pickle._Pickler):
    """The pure-Python pickler, writing a plain GLOBAL opcode for each ``_Global``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_named_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_named_global


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _ForgingPickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


def _call_global(module: str, name: str, *args) -> bytes:
    """A pickle whose only content is ``module.name(*args)``."""
    return _dumps(_Reduce(_Global(module, name), args))


def _record_pickle(state: dict, class_name: str = "Outer", module_src: str = "print('hi')") -> bytes:
    """``{"G": <persistent object>}`` the way official snapshots store networks."""
    meta = {"type": "class", "version": 6, "module_src": module_src, "class_name": class_name, "state": state}
    return _dumps({"G": _Reduce(_Global("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))})


def _storage_blob(values: torch.Tensor) -> bytes:
    """The legacy torch.save stream torch itself pickles for a tensor's storage."""
    return next(arg for _, arg, _ in pickletools.genops(pickle.dumps(values)) if isinstance(arg, bytes))


@pytest.fixture(scope="module", params=["t64", "r64"])
def case(request, sg3_reference_dir: Path):
    folder = sg3_reference_dir / request.param
    return folder, read_official_pickle(folder / "network-snapshot.pkl")


def _assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) and set(actual) == set(expected)
    for key, value in expected.items():
        got = actual[key]
        assert got.dtype == torch.float32 and got.device.type == "cpu" and got.is_contiguous(), key
        assert not got.requires_grad, key
        assert torch.equal(got, value), key


# ---- the fixture snapshots ----

def test_top_level_structure(case) -> None:
    folder, snap = case
    assert list(snap) == ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert [snap[k].class_name for k in ("G", "D", "G_ema")] == ["Generator", "Discriminator", "Generator"]
    assert all(snap[k].version == 6 for k in ("G", "D", "G_ema"))
    if folder.name == "t64":
        assert isinstance(snap["augment_pipe"], PersistentRecord) and snap["augment_pipe"].class_name == "AugmentPipe"
        assert set(snap["augment_pipe"].state_dict()) >= {"p"}
    else:
        assert snap["augment_pipe"] is None
    assert snap["training_set_kwargs"] == {
        "class_name": "training.dataset.ImageFolderDataset", "path": "~/datasets/fixture-64x64.zip",
        "use_labels": False, "max_size": 1000, "xflip": False, "resolution": 64, "random_seed": 0,
    }


def test_state_dicts_match_reference(case) -> None:
    folder, snap = case
    _assert_same_state(snap["G_ema"].state_dict(), load_file(folder / "G_state.safetensors"))
    _assert_same_state(snap["D"].state_dict(), load_file(folder / "D_state.safetensors"))


def test_g_differs_from_g_ema(case) -> None:
    _, snap = case
    g, g_ema = snap["G"].state_dict(), snap["G_ema"].state_dict()
    assert set(g) == set(g_ema)
    assert any(not torch.equal(g[k], g_ema[k]) for k in g)


def test_init_kwargs_match_reference(case) -> None:
    folder, snap = case
    assert snap["G_ema"].init_kwargs() == json.loads((folder / "G_init_kwargs.json").read_text())
    assert snap["D"].init_kwargs() == json.loads((folder / "D_init_kwargs.json").read_text())
    assert isinstance(snap["G_ema"].state["_init_kwargs"]["mapping_kwargs"], EasyDict)
    assert type(snap["G_ema"].init_kwargs()["mapping_kwargs"]) is dict
    assert snap["G_ema"].init_args() == ()


def test_record_helpers(case) -> None:
    _, snap = case
    g_ema = snap["G_ema"]
    assert list(g_ema.children()) == ["synthesis", "mapping"]
    fc0 = g_ema.children()["mapping"].children()["fc0"]
    assert fc0.class_name == "FullyConnectedLayer"
    assert fc0.init_args() == (64, 64) and all(type(v) is int for v in fc0.init_args())
    keys = list(g_ema.state_dict())
    # torch's order: a module's parameters, then its buffers, then its children.
    assert keys.index("mapping.w_avg") < keys.index("mapping.fc0.weight") < keys.index("mapping.fc0.bias")
    assert list(fc0.state_dict(prefix="x.")) == ["x.weight", "x.bias"]
    # The embedded source is dropped; only its checksum is kept.
    assert g_ema.module_src_sha256 == hashlib.sha256(b"# source omitted from fixture").hexdigest()
    assert "source omitted" not in repr(g_ema)


def test_other_sources(case) -> None:
    folder, snap = case
    path = folder / "network-snapshot.pkl"
    expected = snap["G_ema"].state_dict()
    from_url = read_official_pickle(path.as_uri(), storage_options={})
    from_bytes = read_official_pickle(path.read_bytes())
    with open(path, "rb") as file:
        from_file = read_official_pickle(file)
    from_str = read_official_pickle(str(path))
    for other in (from_url, from_bytes, from_file, from_str):
        _assert_same_state(other["G_ema"].state_dict(), expected)


def test_truncated_snapshot_is_a_format_error(sg3_reference_dir: Path) -> None:
    data = (sg3_reference_dir / "t64" / "network-snapshot.pkl").read_bytes()
    with pytest.raises(NetworkFormatError, match="truncated"):
        read_official_pickle(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a pickle"),
        (b"PK\x03\x04 this is a zip, not a pickle", "zip archive"),
        (b"\x80\x04\x95", "truncated"),
        (b"\x80\x04garbage.", "not a readable"),
        (pickle.dumps([1, 2, 3]), "holds a list at its top level"),
    ],
    ids=["empty", "zip", "cut-after-header", "garbage", "list"],
)
def test_not_a_snapshot_is_a_format_error(data: bytes, match: str) -> None:
    with pytest.raises(NetworkFormatError, match=match):
        read_official_pickle(data)


# ---- plain data written by this numpy/torch: the numpy._core spelling and tensor views ----

def test_numpy_core_spelling_and_tensor_views() -> None:
    base = torch.arange(10.0)
    data = pickle.dumps({
        "view": base[2:8:2], "param": torch.nn.Parameter(torch.ones(2), requires_grad=False),
        "array": np.arange(3), "float": np.float64(0.5), "flag": np.bool_(True),
        "kw": collections.OrderedDict(a=1),
    })
    assert b"numpy._core.multiarray" in data
    out = read_official_pickle(data)
    assert torch.equal(out["view"], torch.tensor([2.0, 4.0, 6.0]))
    assert torch.equal(out["param"], torch.ones(2)) and type(out["param"]) is torch.Tensor
    assert out["array"].tolist() == [0, 1, 2] and out["float"] == 0.5 and out["flag"] == np.True_
    assert out["kw"] == {"a": 1}


def test_tensor_offset_and_stride_are_honoured_and_bounded() -> None:
    storage = _Reduce(torch.storage._load_from_bytes, (_storage_blob(torch.arange(4.0)),))

    def tensor(offset, size, stride):
        return _Reduce(torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict()))

    out = read_official_pickle(pickle.dumps({"t": tensor(1, (2,), (2,))}))
    assert torch.equal(out["t"], torch.tensor([1.0, 3.0]))
    with pytest.raises(NetworkFormatError, match="overruns"):
        read_official_pickle(pickle.dumps({"t": tensor(2, (4,), (1,))}))


def test_hand_built_record_follows_torch_state_dict_rules() -> None:
    state = {
        "_parameters": {"w": torch.ones(2), "unused": None},
        "_buffers": {"b": torch.zeros(1, dtype=torch.float64), "scratch": torch.ones(1), "gone": None},
        "_non_persistent_buffers_set": {"scratch"},
        "_modules": {"missing": None},
        "_init_args": (np.int64(3),),
        "_init_kwargs": {"k": np.float64(0.5), "shape": np.array([4, 4]), "t": (1, 2)},
    }
    record = read_official_pickle(_record_pickle(state))["G"]
    assert record.class_name == "Outer" and record.children() == {}
    assert record.module_src_sha256 == hashlib.sha256(b"print('hi')").hexdigest()
    out = record.state_dict(prefix="m.")
    assert list(out) == ["m.w", "m.b"] and out["m.b"].dtype == torch.float32
    assert record.init_args() == (3,) and type(record.init_args()[0]) is int
    assert record.init_kwargs() == {"k": 0.5, "shape": [4, 4], "t": [1, 2]}


def test_self_referencing_kwargs_are_a_format_error() -> None:
    loop: list = []
    loop.append(loop)
    record = read_official_pickle(_record_pickle({"_init_kwargs": {"loop": loop}}))["G"]
    with pytest.raises(NetworkFormatError, match="too deeply"):
        record.init_kwargs()


@pytest.mark.parametrize("blob", [b"\x80\x02X\x03\x00\x00\x00abc.", b""], ids=["bad-magic", "empty"])
def test_corrupt_storage_is_a_format_error(blob: bytes) -> None:
    with pytest.raises(NetworkFormatError) as info:
        read_official_pickle(pickle.dumps({"t": _Reduce(torch.storage._load_from_bytes, (blob,))}))
    assert "weights_only" not in str(info.value)


# ---- malicious pickles: refused, naming the culprit, with nothing executed ----

def _malicious_cases(marker: Path) -> dict[str, tuple[bytes, str]]:
    touch = f"touch {marker}"
    evil = _Reduce(os.system, (touch,))
    system = f"{os.system.__module__}.{os.system.__name__}"  # posix.system (nt.system on Windows)
    return {
        "os.system": (pickle.dumps(evil), system),
        "builtins.eval": (pickle.dumps(_Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').close()",))), "builtins.eval"),
        "subprocess.Popen": (pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))), "subprocess.Popen"),
        "persistence.other": (_call_global("torch_utils.persistence", "_src_to_module", "import os"),
                              "torch_utils.persistence._src_to_module"),
        "pickle.loads": (_call_global("pickle", "loads", pickle.dumps(evil)), "pickle.loads"),
        "builtins.getattr": (_call_global("builtins", "getattr", "os", "system"), "builtins.getattr"),
        "torch.load": (_call_global("torch", "load", str(marker)), "torch.load"),
        "numpy.load": (_call_global("numpy", "load", str(marker), True), "numpy.load"),
        "nested": (pickle.dumps({"G": collections.OrderedDict(w=1, evil=evil), "D": None}), system),
        "inside storage": (pickle.dumps(_Reduce(torch.storage._load_from_bytes, (pickle.dumps(evil, protocol=2),))), system),
    }


@pytest.mark.parametrize("name", list(_malicious_cases(Path("/x"))))
def test_malicious_pickle_is_refused(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data, culprit = _malicious_cases(marker)[name]
    with pytest.raises(UnsafePickleError) as info:
        read_official_pickle(data)
    message = str(info.value)
    assert f"'{culprit}'" in message and "nothing in it was executed" in message
    assert "weights_only" not in message
    assert not marker.exists()


def test_malicious_file_on_disk_names_the_file(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "network-snapshot.pkl"
    path.write_bytes(pickle.dumps(_Reduce(os.system, (f"touch {marker}",))))
    with pytest.raises(UnsafePickleError, match="network-snapshot.pkl"):
        read_official_pickle(path)
    assert not marker.exists()


class _PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return "secret" if obj == "hide me" else None


def _persistent_id_pickle() -> bytes:
    buffer = io.BytesIO()
    _PersistentPickler(buffer, protocol=4).dump({"G": "hide me"})
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_persistent_id_pickle(), "persistent id"),
        (b"\x80\x02\x82\x01.", "extension registry"),
        (pickle.dumps({"a": np.array([1, None], dtype=object)}), "numpy dtype"),
        # A dtype whose state claims to hold Python objects: numpy would read numbers as pointers.
        (pickle.dumps(_Reduce(np.dtype, ("i8", False, True), (3, "<", None, None, None, -1, -1, 1))), "__setstate__"),
        (pickle.dumps(_Reduce(collections.OrderedDict, (), {"x": 1})), "__setstate__"),
        (_call_global("numpy.core.multiarray", "_reconstruct", 1, (0,), b"b"), "numpy.ndarray"),
        (_call_global("numpy._core.multiarray", "_reconstruct", None, (3,), "O"), "numpy.ndarray"),
        (pickle.dumps({"t": _Reduce(torch.storage._load_from_bytes, (b"\x80\x02garbage",))}), "tensor storage"),
    ],
    ids=[
        "persistent-id", "ext-opcode", "object-array", "forged-dtype-flags", "unexpected-build",
        "ndarray-subtype", "object-reconstruct", "storage-opcode-torch-refuses",
    ],
)
def test_protocol_tricks_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(UnsafePickleError, match=match):
        read_official_pickle(data)
