"""Read an official StyleGAN3 ``network-snapshot.pkl`` as data only, never running code from it.

NVIDIA's snapshots store every network together with its Python source and rebuild it by
executing that source. We instead unpickle against an allow-list: each global such a file names
maps to a small function of ours, each network becomes a :class:`PersistentRecord` (class name
plus module ``__dict__``), and the embedded source is dropped after taking its sha256.

The pure-Python unpickler is used on purpose: unlike the C one it lets us vet every BUILD
(``__setstate__``) and refuse the extension registry. That matters because numpy's
``dtype.__setstate__`` accepts forged flags that make plain numbers be read as object pointers.
"""

from __future__ import annotations

import collections
import hashlib
import io
import operator
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import fsspec
import numpy as np
import torch

from sg3archive.errors import NetworkFormatError, Sg3ArchiveError, UnsafePickleError

try:  # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray

_MAX_DEPTH = 64  # far deeper than any real network; stops self-referencing data early
_ADVICE = (
    "If the file came from a fork you trust, convert it on a machine where you trust it "
    "with `sg3archive import-network`."
)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (the nested kwargs of official networks): a plain dict."""


class _Refused(Exception):
    """Internal: the pickle asked for something outside the allow-list (becomes UnsafePickleError)."""


@dataclass(frozen=True, eq=False)
class PersistentRecord:
    """One pickled official network module, kept as data: its class name and its ``__dict__``."""

    class_name: str
    state: dict = field(repr=False)
    version: int
    module_src_sha256: str | None = None  # diagnostics only; the source text itself is never kept

    def _field(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.state.get(name, default)
        if not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise NetworkFormatError(f"{self.class_name}.{name} is a {type(value).__name__}, not a {names}.")
        return value

    def init_args(self) -> tuple:
        """The positional constructor arguments the official code recorded, as plain Python values."""
        return tuple(_plain(self._field("_init_args", (tuple, list), ())))

    def init_kwargs(self) -> dict:
        """The keyword constructor arguments, as plain dicts/lists/Python scalars (JSON-like)."""
        return _plain(self._field("_init_kwargs", dict, {}))

    def children(self) -> dict[str, PersistentRecord]:
        """The child modules by name, in registration order (``None`` entries are skipped)."""
        out = {}
        for name, child in self._field("_modules", dict, {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentRecord):
                raise NetworkFormatError(
                    f"{self.class_name}.{name} is a {type(child).__name__}, not a network module."
                )
            out[name] = child
        return out

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat state dict with the key names and order ``module.state_dict()`` gives.

        Parameters, then persistent buffers, then children recursively. Tensors are detached,
        contiguous CPU copies; floating-point ones are float32 (other dtypes are kept).
        """
        out: dict[str, torch.Tensor] = {}
        self._collect(prefix, out, 0)
        return out

    def _collect(self, prefix: str, out: dict[str, torch.Tensor], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise NetworkFormatError(f"{self.class_name} nests modules too deeply (or contains itself).")
        skip = self._field("_non_persistent_buffers_set", (set, frozenset), set())
        for group in ("_parameters", "_buffers"):
            for name, value in self._field(group, dict, {}).items():
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise NetworkFormatError(f"{self.class_name}.{group}[{name!r}] is not a tensor.")
                dtype = torch.float32 if value.is_floating_point() else value.dtype
                out[prefix + name] = value.detach().to("cpu", dtype).clone(memory_format=torch.contiguous_format)
        for name, child in self.children().items():
            child._collect(f"{prefix}{name}.", out, depth + 1)


def _plain(value: Any, depth: int = 0) -> Any:
    """EasyDict/OrderedDict -> dict, tuple -> list, numpy/torch values -> Python values, recursively."""
    if depth > _MAX_DEPTH:
        raise NetworkFormatError("constructor arguments nest too deeply (or contain themselves).")
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return value.tolist()
    return value


# ---- numpy: real numpy objects, but only plain numeric dtypes with untouched internal state ----

class _NdarrayToken:
    """Stands for ``numpy.ndarray`` so a pickle can name it but never call ndarray's constructor."""

    __slots__ = ()


_NDARRAY = _NdarrayToken()


def _dtype_ok(dt: Any) -> bool:
    return (
        isinstance(dt, np.dtype) and dt.kind in "biufc" and not dt.hasobject
        and dt.fields is None and dt.subdtype is None and dt.flags == np.dtype(dt.str).flags
    )


def _numpy_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if not _dtype_ok(dt):
        raise _Refused(f"asks for the numpy dtype {str(dt)[:60]!r} (only plain numbers are allowed)")
    return dt


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not _NDARRAY or not _dtype_ok(np.dtype(dtype)):
        raise _Refused("asks numpy to rebuild an array that is not a numpy.ndarray of plain numbers")
    return _np_multiarray._reconstruct(np.ndarray, shape, dtype)


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not _dtype_ok(dtype) or not isinstance(data, bytes):
        raise _Refused("asks for a numpy scalar that is not a plain number")
    return _np_multiarray.scalar(dtype, data)


def _build_allowed(inst: Any, state: Any) -> bool:
    """BUILD is how numpy dtypes and arrays get their state; nothing else in a snapshot uses it."""
    if isinstance(inst, np.dtype):
        canonical = inst.__reduce__()[2]
        return (type(state) is tuple and len(state) == len(canonical) and state[0] == canonical[0]
                and state[1] in ("<", ">", "|", "=") and state[2:] == canonical[2:])
    if type(inst) is np.ndarray:
        return (type(state) is tuple and len(state) == 5 and _dtype_ok(state[2])
                and isinstance(state[4], (bytes, bytearray)))
    return False


# ---- torch: storages come from torch's own weights-only loader; tensors are views on them ----

@dataclass(frozen=True)
class _Storage:
    untyped: torch.UntypedStorage
    dtype: torch.dtype


def _load_from_bytes(blob: Any) -> _Storage:
    """Each storage is a complete legacy ``torch.save`` stream; torch reads it weights-only."""
    if not isinstance(blob, (bytes, bytearray)):
        raise NetworkFormatError("a tensor storage is not stored as bytes.")
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text here advises weights_only=False: never show it
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found or "unsupported" in str(exc).lower():
            what = f"the global {found.group(1)!r}" if found else "content torch's weights-only loader refuses"
            raise _Refused(f"holds a tensor storage that references {what}") from None
        raise NetworkFormatError("a tensor storage is corrupt (torch could not decode it).") from None
    if isinstance(obj, torch.storage.TypedStorage):  # what torch 2.14 returns for these streams
        return _Storage(obj._untyped_storage, obj.dtype)  # private attribute: the public one warns
    if isinstance(obj, torch.UntypedStorage):
        return _Storage(obj, torch.uint8)
    raise NetworkFormatError(f"a tensor storage decoded to a {type(obj).__name__}, not a storage.")


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any
) -> torch.Tensor:
    """View of ``storage``; requires_grad, backward hooks and metadata are ignored (data only)."""
    if not isinstance(storage, _Storage):
        raise NetworkFormatError("a tensor is not backed by a tensor storage.")
    offset = operator.index(storage_offset)
    size, stride = tuple(map(operator.index, size)), tuple(map(operator.index, stride))
    numel = storage.untyped.nbytes() // storage.dtype.itemsize
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0 or (all(size) and last >= numel):
        raise NetworkFormatError(
            f"a tensor (size {size}, stride {stride}, offset {offset}) overruns its storage of {numel} elements."
        )
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise NetworkFormatError("a parameter does not wrap a tensor.")
    return data


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    """Record the class name and state; ``module_src`` is only hashed, never looked at otherwise."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise NetworkFormatError("a persistent object is not a pickled class instance.")
    name, state, version, src = (meta.get(k) for k in ("class_name", "state", "version", "module_src"))
    if not isinstance(name, str) or not isinstance(state, dict) or type(version) is not int:
        raise NetworkFormatError("a persistent object lacks class_name, state or version.")
    digest = None if not isinstance(src, str) else hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()
    return PersistentRecord(name, state, version, digest)


_NUMPY_GLOBALS = {"_reconstruct": _numpy_reconstruct, "scalar": _numpy_scalar}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{
        (module, name): fn
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x / numpy 2 spelling
        for name, fn in _NUMPY_GLOBALS.items()
    },
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
}


class _SnapshotUnpickler(pickle._Unpickler):  # pure-Python unpickler: its opcodes can be vetted
    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise _Refused(f"references the global {f'{module}.{name}'[:200]!r}")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("uses a pickle persistent id")

    def _load_ext(self) -> None:
        raise _Refused("uses the pickle extension registry (EXT opcodes)")

    def _load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if not _build_allowed(inst, state):
            kind = "numpy dtype" if isinstance(inst, np.dtype) else type(inst).__name__
            raise _Refused(f"applies __setstate__ (pickle BUILD) to a {kind} in an unexpected way")
        pickle._Unpickler.load_build(self)

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _load_ext
    dispatch[pickle.BUILD[0]] = _load_build
    del _op


def _load(file: BinaryIO, label: str) -> dict:
    head = file.read(2)  # the PROTO opcode, which every Python 3 pickle starts with; consumed here
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        hint = " (a zip archive, such as a torch.save file)" if head.startswith(b"PK") else ""
        raise NetworkFormatError(
            f"{label} is not a pickle{hint}: it starts with {head!r}. "
            "Pass the network-snapshot.pkl that StyleGAN3 training wrote."
        )
    try:
        obj = _SnapshotUnpickler(file).load()
    except _Refused as exc:
        raise UnsafePickleError(
            f"{label} {exc}, which an official StyleGAN3 snapshot never needs; "
            f"refusing to load it (nothing in it was executed). {_ADVICE}"
        ) from None
    except NetworkFormatError as exc:
        raise NetworkFormatError(f"{label}: {exc}") from None
    except (Sg3ArchiveError, OSError):
        raise
    except Exception as exc:
        raise NetworkFormatError(
            f"{label} is not a readable StyleGAN3 snapshot pickle ({type(exc).__name__}: {str(exc)[:200]}); "
            "it may be truncated or not a pickle at all. Copy it again from its source."
        ) from exc
    if not isinstance(obj, dict):
        raise NetworkFormatError(
            f"{label} holds a {type(obj).__name__} at its top level, not the dict of a training "
            "snapshot (keys G, D, G_ema, augment_pipe, training_set_kwargs)."
        )
    return obj


def read_official_pickle(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO,
    *,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Read an official StyleGAN3 snapshot pickle without executing anything from it.

    ``source`` is a local path, any fsspec URL (``storage_options`` go to ``fsspec.open``), the
    file's bytes, or a binary file object. Returns the top-level dict: networks (``G``, ``D``,
    ``G_ema``, ``augment_pipe``) as :class:`PersistentRecord` (or ``None``), other entries as data.
    Raises UnsafePickleError for anything outside the allow-list and NetworkFormatError for a
    file that is not a (complete) snapshot pickle.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load(io.BytesIO(bytes(source)), "the pickle data")
    if isinstance(source, (str, os.PathLike)):
        path = str(os.fspath(source))
        with fsspec.open(path, "rb", **(storage_options or {})) as file:
            return _load(file, repr(path))
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return _load(source, repr(name) if isinstance(name, str) else "the pickle stream")
    raise TypeError(f"read_official_pickle needs a path, URL, bytes or a binary file, not {type(source).__name__}.")
