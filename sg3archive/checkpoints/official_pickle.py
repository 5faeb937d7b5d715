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
import math
import operator
import os
import pickle
import pickletools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, cast

import fsspec
import numpy as np
import torch

from sg3archive.checkpoints.safe_read import MAX_PICKLE_BYTES, check_size, read_capped
from sg3archive.errors import NetworkFormatError, Sg3ArchiveError, UnsafePickleError

try:  # numpy >= 2 moved numpy.core to numpy._core
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]

_MAX_DEPTH = 64  # far deeper than any real network; stops self-referencing data early
_MAX_KWARG_NODES = 10_000  # values in one module's constructor arguments (official: about 20)
_UNBOUNDED = 1 << 62
# Opcodes a file may hold, its main pickle and the small pickles heading each tensor storage together.
# Each opcode makes at most one Python object (an empty set, ~220 bytes, is the largest), so this
# caps what a crafted file of 1-byte opcodes can build at about 70 MB. The reference snapshots in
# shared/fixtures/sg3_reference (64², G + G_ema + D, 97 modules, 275 storages) hold about 27,200
# main opcodes plus 15,500 in storage headers (56 per storage); the largest official configuration
# (1024², stylegan3-r, conditional, 8 mapping layers, G + G_ema + D + augment_pipe: about 140
# modules and 390 storages) comes to about 60,000, so this leaves a margin of five.
MAX_PICKLE_OBJECTS = 300_000
_LARGEST_OFFICIAL_OBJECTS = "60,000"
# Text and bytes arguments outside tensor data. Python keeps a str of non-Latin-1 text at 4 bytes a
# character (one emoji in ASCII text does it), and the pure-Python unpickler copies each argument
# first, so one 2 GiB BINUNICODE would hold 10 GB. Official snapshots keep only short names, numpy
# scalars and each module's source (networks_stylegan2.py, the largest, is tens of KB; the
# reference fixtures replace it, and their longest string is 35 bytes). Tensor data, the legacy
# ``torch.save`` streams of BINBYTES arguments, is not limited here: it is parsed as storages.
MAX_PICKLE_ARG_BYTES = 1 << 20  # one argument, as stored in the file (UTF-8 for text)
MAX_PICKLE_TEXT_BYTES = 16 << 20  # all of them together, storage headers included
# How each legacy storage stream starts: its first pickle, torch's magic number (protocol 2).
_STORAGE_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
_BYTES_OPCODES = frozenset((pickle.BINBYTES[0], pickle.SHORT_BINBYTES[0], pickle.BINBYTES8[0]))
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
    max_state_bytes: int | None = field(default=None, repr=False)  # what state_dict may copy (file-derived)

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
            if not isinstance(name, str) or not isinstance(child, PersistentRecord):
                raise NetworkFormatError(
                    f"{self.class_name}.{str(name)[:60]} is a {type(child).__name__}, not a network module."
                )
            out[name] = child
        return out

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat state dict with the key names and order ``module.state_dict()`` gives.

        Parameters, then persistent buffers, then children recursively. Tensors are detached,
        contiguous CPU copies; floating-point ones are float32 (other dtypes are kept). Each
        module is visited once (a module appearing twice in the tree is refused), and the copies
        together stay within ``max_state_bytes`` (set from the size of the file it came from).
        """
        out: dict[str, torch.Tensor] = {}
        budget = [self.max_state_bytes if self.max_state_bytes is not None else _UNBOUNDED]
        self._collect(prefix, out, 0, set(), budget)
        return out

    def _collect(self, prefix: str, out: dict[str, torch.Tensor], depth: int, seen: set[int], budget: list[int]) -> None:
        if depth > _MAX_DEPTH:
            raise NetworkFormatError(f"{self.class_name} nests modules too deeply (or contains itself).")
        if id(self) in seen:
            raise NetworkFormatError(
                f"{self.class_name} appears twice in one network ({prefix or 'top level'}); "
                "official networks never share modules."
            )
        seen.add(id(self))
        skip = self._field("_non_persistent_buffers_set", (set, frozenset), set())
        for group in ("_parameters", "_buffers"):
            for name, value in self._field(group, dict, {}).items():
                if not isinstance(name, str):
                    raise NetworkFormatError(f"{self.class_name}.{group} has a {type(name).__name__} as a name.")
                if value is None or (group == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise NetworkFormatError(f"{self.class_name}.{group}[{name!r}] is not a tensor.")
                dtype = torch.float32 if value.is_floating_point() else value.dtype
                budget[0] -= value.numel() * dtype.itemsize
                if budget[0] < 0:
                    raise NetworkFormatError(
                        f"{self.class_name}: its tensors add up to more data than the file holds "
                        "(the same weights are used many times over)."
                    )
                out[prefix + name] = value.detach().to("cpu", dtype).clone(memory_format=torch.contiguous_format)
        for name, child in self.children().items():
            child._collect(f"{prefix}{name}.", out, depth + 1, seen, budget)


def _plain(value: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """EasyDict/OrderedDict -> dict, tuple -> list, numpy/torch values -> Python values, recursively.

    At most ``_MAX_KWARG_NODES`` values in all: a list holding the same sub-list twice at every
    level would otherwise expand exponentially.
    """
    budget = [_MAX_KWARG_NODES] if budget is None else budget
    if depth > _MAX_DEPTH:
        raise NetworkFormatError("constructor arguments nest too deeply (or contain themselves).")
    budget[0] -= 1
    if budget[0] < 0:
        raise NetworkFormatError(f"constructor arguments hold more than {_MAX_KWARG_NODES} values.")
    if isinstance(value, dict):
        return {key: _plain(item, depth + 1, budget) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1, budget) for item in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        budget[0] -= value.numel() if isinstance(value, torch.Tensor) else int(np.size(value))
        if budget[0] < 0:
            raise NetworkFormatError(f"constructor arguments hold more than {_MAX_KWARG_NODES} values.")
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
    """numpy pickles every array as an empty ``(0,)`` array plus BUILD; any other shape is refused,
    since ``_reconstruct`` would allocate it from a few bytes of pickle."""
    if subtype is not _NDARRAY or not _dtype_ok(np.dtype(dtype)):
        raise _Refused("asks numpy to rebuild an array that is not a numpy.ndarray of plain numbers")
    if type(shape) is not tuple or len(shape) != 1 or type(shape[0]) is not int or shape[0] != 0:
        raise NetworkFormatError("a numpy array is declared with a shape numpy itself never pickles.")
    return cast(np.ndarray, _np_multiarray._reconstruct(np.ndarray, shape, dtype))  # numpy's stub says object


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    if not _dtype_ok(dtype) or not isinstance(data, bytes):
        raise _Refused("asks for a numpy scalar that is not a plain number")
    return cast(np.generic, _np_multiarray.scalar(dtype, data))  # numpy's stub says a 0-d array


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


# ---- counting opcodes without building anything ----
#
# Every opcode makes at most one object, and no opcode is charged per se by the unpickler, so a
# file of 1-byte opcodes (EMPTY_SET, EMPTY_LIST, MARK, ...) would build one object per byte. The
# opcodes are therefore counted before unpickling: arguments are skipped by their declared length
# (a tensor's megabytes of BINBYTES are one step), and counting stops at the cap.

_STOP, _UNKNOWN, _ONE_LINE, _TWO_LINES, _LEN1, _LEN4, _LEN4U, _LEN8U = -8, -7, -1, -6, -2, -3, -4, -5


def _arg_skip_table() -> list[int]:
    """For each opcode byte: its fixed argument length (>= 0), or one of the negative kinds above."""
    kinds = {
        pickletools.UP_TO_NEWLINE: _ONE_LINE, pickletools.TAKEN_FROM_ARGUMENT1: _LEN1,
        pickletools.TAKEN_FROM_ARGUMENT4: _LEN4, pickletools.TAKEN_FROM_ARGUMENT4U: _LEN4U,
        pickletools.TAKEN_FROM_ARGUMENT8U: _LEN8U,
    }
    table = [_UNKNOWN] * 256
    for op in pickletools.opcodes:
        arg = op.arg
        if op.code == pickle.STOP.decode("latin-1"):
            table[ord(op.code)] = _STOP
        elif arg is None:
            table[ord(op.code)] = 0
        elif arg.name == "stringnl_noescape_pair":  # GLOBAL and INST: "module\nname\n"
            table[ord(op.code)] = _TWO_LINES
        else:
            table[ord(op.code)] = arg.n if arg.n >= 0 else kinds[arg.n]
    return table


_ARG_SKIP = _arg_skip_table()
_OP_NAMES = {ord(op.code): op.name for op in pickletools.opcodes}


def count_opcodes(data: bytes, limit: int) -> int:
    """Opcodes of the pickle in ``data`` up to its STOP, or ``limit + 1`` once there are more than ``limit``.

    Raises NetworkFormatError for an argument over the limits of :func:`scan_pickle`.
    """
    return scan_pickle(data, limit)[0]


def scan_pickle(data: bytes, limit: int) -> tuple[int, int]:
    """(opcodes, argument bytes) of the pickle in ``data``, without decoding or building anything.

    Opcodes are counted up to STOP, or ``limit + 1`` once there are more than ``limit``. Counting
    also ends at an unknown opcode or a truncated argument, exactly where the unpickler will fail,
    so it never runs more opcodes than were counted here. Every text or bytes argument except a
    tensor storage's stream is measured as stored: one over ``MAX_PICKLE_ARG_BYTES``, or all of
    them over ``MAX_PICKLE_TEXT_BYTES``, raise NetworkFormatError before a str is made of them.
    The loop is kept tight (about 0.3 µs an opcode): the cap is reached within a tenth of a second.
    """
    table, size, pos, count, text = _ARG_SKIP, len(data), 0, 0, 0
    while count <= limit and pos < size:
        skip = table[data[pos]]
        pos += 1
        count += 1
        if skip >= 0:  # no argument, or one of fixed length
            pos += skip
        elif skip == _STOP:
            break
        elif skip == _UNKNOWN:
            count -= 1
            break
        elif skip == _ONE_LINE or skip == _TWO_LINES:
            code = data[pos - 1]
            for _ in range(1 if skip == _ONE_LINE else 2):
                newline = data.find(b"\n", pos, pos + MAX_PICKLE_ARG_BYTES + 1)
                if newline < 0:
                    if size - pos > MAX_PICKLE_ARG_BYTES:
                        raise _argument_too_long(None, _OP_NAMES[code])
                    return min(count, limit + 1), text
                text += newline - pos
                if text > MAX_PICKLE_TEXT_BYTES:
                    raise _too_much_text()
                pos = newline + 1
        elif skip == _LEN1:
            if pos >= size:
                break
            length = data[pos]
            if not (data[pos - 1] in _BYTES_OPCODES and data.startswith(_STORAGE_MAGIC, pos + 1)):
                text += length
                if text > MAX_PICKLE_TEXT_BYTES:
                    raise _too_much_text()
            pos += 1 + length
        else:
            width = 8 if skip == _LEN8U else 4
            length = int.from_bytes(data[pos : pos + width], "little", signed=skip == _LEN4)
            if length < 0:
                break
            if not (data[pos - 1] in _BYTES_OPCODES and data.startswith(_STORAGE_MAGIC, pos + width)):
                if length > MAX_PICKLE_ARG_BYTES:  # even when truncated: pickle.py decodes what is there
                    raise _argument_too_long(length, _OP_NAMES[data[pos - 1]])
                text += length
                if text > MAX_PICKLE_TEXT_BYTES:
                    raise _too_much_text()
            pos += width + length
    return min(count, limit + 1), text


def _argument_too_long(length: int | None, op_name: str, where: str = "") -> NetworkFormatError:
    """The one-line refusal of a text or bytes argument over ``MAX_PICKLE_ARG_BYTES`` (``length``:
    its declared length; None for a line, which is only searched that far for its end)."""
    size = f"more than {MAX_PICKLE_ARG_BYTES:,}" if length is None else f"{length:,}"
    return NetworkFormatError(
        f"a {op_name} argument of {size} bytes{where} is far beyond any StyleGAN3 snapshot "
        f"(at most {MAX_PICKLE_ARG_BYTES:,} outside tensor data; its longest text, a module's source, "
        "is tens of KB); the file is damaged or hostile."
    )


def _too_much_text(where: str = "") -> NetworkFormatError:
    """The one-line refusal of text and bytes arguments together over ``MAX_PICKLE_TEXT_BYTES``."""
    return NetworkFormatError(
        f"its text and bytes outside tensor data{where} exceed {MAX_PICKLE_TEXT_BYTES:,} bytes, far beyond "
        "any StyleGAN3 snapshot (about 100 KB of module source); the file is damaged or hostile."
    )


def _too_many_objects(where: str = "") -> NetworkFormatError:
    """The one-line refusal of a pickle over ``MAX_PICKLE_OBJECTS`` (``where``: which part counted)."""
    return NetworkFormatError(
        f"a pickle of more than {MAX_PICKLE_OBJECTS:,} objects{where} is far beyond any StyleGAN3 snapshot "
        f"(at most about {_LARGEST_OFFICIAL_OBJECTS}); the file is damaged or hostile."
    )


# ---- torch storages: parsed here from the bytes in the file, never left uninitialised ----
#
# ``torch.storage._load_from_bytes(blob)`` gets a complete legacy ``torch.save`` stream: five small
# pickles (magic number, protocol version, system info, the storage's persistent id, the list of
# storage keys), then the element count as 8 little-endian bytes and the raw data. torch's own
# reader allocates the size the header declares and fills it only for keys the last pickle lists,
# so a crafted stream could return gigabytes, or uninitialised heap memory. Here the storage is
# made from the data bytes themselves, which must be exactly as many as declared.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
# The opcodes torch's legacy writer uses for those five pickles (protocol 2); anything else is refused.
_STORAGE_OPCODES = {
    op.code.encode("latin-1"): op for op in pickletools.opcodes if op.name in {
        "PROTO", "STOP", "MARK", "NONE", "NEWTRUE", "NEWFALSE", "BININT", "BININT1", "BININT2", "LONG1",
        "BINUNICODE", "SHORT_BINUNICODE", "EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE", "SETITEM", "SETITEMS",
        "APPEND", "APPENDS", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "BINPUT", "LONG_BINPUT", "BINGET",
        "LONG_BINGET", "MEMOIZE", "GLOBAL", "BINPERSID",
    }
}


@dataclass(frozen=True)
class _Storage:
    untyped: torch.UntypedStorage
    dtype: torch.dtype


class _StorageId:
    """What the storage pickle's persistent id stands for while it is being unpickled."""


class _StorageUnpickler(pickle.Unpickler):
    """Unpickles the small header pickles of a storage stream: only ``torch.<X>Storage`` names."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.ids: list[Any] = []

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _Refused(f"holds a tensor storage that references the global {f'{module}.{name}'[:200]!r}")

    def persistent_load(self, pid: Any) -> Any:
        self.ids.append(pid)
        return _StorageId()


def _header_arg_length(blob: bytes, pos: int, name: str) -> int:
    """Bytes the argument of opcode ``name`` at ``pos`` of a storage header takes in the file (read from
    its length field, or up to its newlines); at most ``MAX_PICKLE_ARG_BYTES + 1`` for a line."""
    if name == "BINUNICODE":
        return int.from_bytes(blob[pos : pos + 4], "little")
    if name in ("SHORT_BINUNICODE", "LONG1"):
        return blob[pos] if pos < len(blob) else 0
    if name == "GLOBAL":
        end, stop = pos, pos + MAX_PICKLE_ARG_BYTES + 1
        for _ in range(2):
            newline = blob.find(b"\n", end, stop)
            if newline < 0:  # too long, or truncated (which the reader reports)
                return min(len(blob), stop) - pos
            end = newline + 1
        return end - pos
    return 0  # fixed-size arguments of at most 4 bytes


def _next_pickle(blob: bytes, pos: int, ctx: _LoadContext) -> tuple[Any, int, list[Any]]:
    """Vet the opcodes of the pickle starting at ``pos``, then unpickle it; returns (value, end, ids).

    Its opcodes are taken from the file's object budget (``ctx``) before anything is built."""
    stream = io.BytesIO(blob)
    stream.seek(pos)
    count = 0
    while True:
        count += 1
        if count > ctx.objects_left:
            raise _too_many_objects(" (counting the headers of its tensor storages)")
        code = stream.read(1)
        if not code:
            raise NetworkFormatError("a tensor storage is truncated.")
        op = _STORAGE_OPCODES.get(code)
        if op is None:
            name = _OP_NAMES.get(code[0], repr(code))
            raise _Refused(f"holds a tensor storage with the pickle opcode {name}, which torch never writes there")
        if op.arg is not None:
            ctx.charge_text(_header_arg_length(blob, stream.tell(), op.name), op.name)  # before decoding it
            try:
                arg = op.arg.reader(stream)
            except ValueError:
                raise NetworkFormatError("a tensor storage is truncated.") from None
            if op.name == "GLOBAL":  # name the culprit even when a later opcode would be refused
                _StorageUnpickler(b"").find_class(*(arg.split(" ", 1) + [""])[:2])
        if op.name == "STOP":
            break
    end = stream.tell()
    ctx.objects_left -= count
    unpickler = _StorageUnpickler(blob[pos:end])
    return unpickler.load(), end, unpickler.ids


def _storage_header(blob: bytes, ctx: _LoadContext) -> tuple[torch.dtype, int, int]:
    """Check the four header pickles and the key list; returns (dtype, element count, data offset)."""
    magic, pos, _ = _next_pickle(blob, 0, ctx)
    protocol, pos, _ = _next_pickle(blob, pos, ctx)
    if type(magic) is not int or magic != _LEGACY_MAGIC or type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
        raise NetworkFormatError("a tensor storage is corrupt (it lacks torch's legacy header).")
    sys_info, pos, _ = _next_pickle(blob, pos, ctx)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise NetworkFormatError("a tensor storage was written big-endian or lacks its system info.")
    storage, pos, ids = _next_pickle(blob, pos, ctx)
    keys, pos, _ = _next_pickle(blob, pos, ctx)
    pid = ids[0] if len(ids) == 1 else None
    if (
        not isinstance(storage, _StorageId) or type(pid) is not tuple or len(pid) != 6 or pid[0] != "storage"
        or pid[1] not in _STORAGE_DTYPES.values() or not isinstance(pid[2], str) or type(pid[4]) is not int
        or pid[4] < 0 or pid[5] is not None
    ):
        raise NetworkFormatError("a tensor storage does not hold exactly one plain storage.")
    if keys != [pid[2]]:
        raise NetworkFormatError(
            "a tensor storage declares data it does not contain (its key list does not name it); "
            "the file is damaged or crafted."
        )
    return pid[1], pid[4], pos


def _parse_storage(blob: bytes, ctx: _LoadContext) -> _Storage:
    """A storage made from the data bytes of a legacy ``torch.save`` stream (see above)."""
    if blob[:2] == b"PK":
        raise NetworkFormatError("a tensor storage is a torch zip archive, which StyleGAN3 snapshots never contain.")
    dtype, numel, pos = _storage_header(blob, ctx)
    nbytes = numel * dtype.itemsize
    if len(blob) < pos + 8 or int.from_bytes(blob[pos : pos + 8], "little") != numel:
        raise NetworkFormatError("a tensor storage's element count does not match its header.")
    present = len(blob) - pos - 8
    if present != nbytes:
        raise NetworkFormatError(
            f"a tensor storage declares {numel:,} elements ({nbytes:,} bytes) but holds {present:,} bytes; "
            "the file is damaged or crafted."
        )
    if nbytes == 0:
        return _Storage(torch.UntypedStorage(0), dtype)
    data = torch.frombuffer(bytearray(blob[pos + 8 :]), dtype=torch.uint8)
    return _Storage(data.untyped_storage(), dtype)


class _LoadContext:
    """Per-file limits and caches, shared by the functions a pickle may call.

    ``tensor_bytes``: all tensor views together may cover at most about twice the file (a view
    repeats no data of its own; official snapshots hold each tensor once). ``work``: elements the
    allowed constructors may copy, so shared sub-structures cannot multiply the work.
    ``objects_left``: opcodes the storage header pickles may still use (what the main pickle left
    of ``MAX_PICKLE_OBJECTS``), so neither can build one object per byte of the file.
    ``text_left``: likewise what the main pickle left of ``MAX_PICKLE_TEXT_BYTES``, for the text
    arguments of those header pickles.
    """

    def __init__(self, file_size: int, objects_left: int = MAX_PICKLE_OBJECTS,
                 text_left: int = MAX_PICKLE_TEXT_BYTES) -> None:
        self.max_bytes = 2 * file_size + (1 << 20)
        self.objects_left = objects_left
        self.text_left = text_left
        self.tensor_bytes = 0
        self.work = 4 * file_size + 100_000
        self.src_digests: dict[int, tuple[str, str]] = {}

    def charge_text(self, length: int, op_name: str) -> None:
        """Take one text argument of a storage header from the budget, before it is decoded."""
        if length > MAX_PICKLE_ARG_BYTES:
            shown = None if op_name == "GLOBAL" else length
            raise _argument_too_long(shown, op_name, " (in the header of a tensor storage)")
        self.text_left -= length
        if self.text_left < 0:
            raise _too_much_text(" (counting the headers of its tensor storages)")

    def charge(self, amount: int) -> None:
        self.work -= amount
        if self.work < 0:
            raise NetworkFormatError("it builds far more data than its size allows (shared structures repeated).")

    def load_from_bytes(self, blob: Any) -> _Storage:
        if not isinstance(blob, (bytes, bytearray)):
            raise NetworkFormatError("a tensor storage is not stored as bytes.")
        return _parse_storage(bytes(blob), self)

    def rebuild_tensor_v2(self, storage: Any, storage_offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
        """View of ``storage``; requires_grad, backward hooks and metadata are ignored (data only)."""
        if not isinstance(storage, _Storage):
            raise NetworkFormatError("a tensor is not backed by a tensor storage.")
        offset = operator.index(storage_offset)
        size, stride = tuple(map(operator.index, size)), tuple(map(operator.index, stride))
        numel_storage = storage.untyped.nbytes() // storage.dtype.itemsize
        numel = math.prod(size)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if len(size) != len(stride) or len(size) > 32 or min((offset, *size, *stride)) < 0 or (numel and last >= numel_storage):
            raise NetworkFormatError(
                f"a tensor (size {size}, stride {stride}, offset {offset}) overruns its storage of {numel_storage} elements."
            )
        if any(s == 0 and n > 1 for n, s in zip(size, stride)) or numel > numel_storage:
            raise NetworkFormatError(
                f"a tensor (size {size}, stride {stride}) repeats the {numel_storage} values of its storage "
                "(a zero or overlapping stride); official snapshots never do that."
            )
        self.tensor_bytes += numel * storage.dtype.itemsize
        if self.tensor_bytes > self.max_bytes:
            raise NetworkFormatError(
                f"its tensors cover more than {self.max_bytes:,} bytes, more than the file holds; "
                "the same data is used many times over."
            )
        return torch.empty(0, dtype=storage.dtype).set_(storage.untyped, offset, size, stride)

    def reconstruct_persistent_obj(self, meta: Any) -> PersistentRecord:
        """Record the class name and state; ``module_src`` is only hashed (once per string), never run."""
        if not isinstance(meta, dict) or meta.get("type") != "class":
            raise NetworkFormatError("a persistent object is not a pickled class instance.")
        name, state, version, src = (meta.get(k) for k in ("class_name", "state", "version", "module_src"))
        if not isinstance(name, str) or not isinstance(state, dict) or type(version) is not int:
            raise NetworkFormatError("a persistent object lacks class_name, state or version.")
        digest = None
        if isinstance(src, str):
            cached = self.src_digests.get(id(src))
            if cached is None or cached[0] is not src:
                cached = (src, hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest())
                self.src_digests[id(src)] = cached
            digest = cached[1]
        return PersistentRecord(name, state, version, digest, max_state_bytes=self.max_bytes)


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise NetworkFormatError("a parameter does not wrap a tensor.")
    return data


def _allowed(ctx: _LoadContext) -> dict[tuple[str, str], Any]:
    """Every global an official snapshot names, mapped to our data-only stand-in for this load."""
    numpy_globals = {"_reconstruct": _numpy_reconstruct, "scalar": _numpy_scalar}
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): EasyDict,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy", "ndarray"): _NDARRAY,
        **{
            (module, name): fn
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x / numpy 2 spelling
            for name, fn in numpy_globals.items()
        },
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_tensor_v2"): ctx.rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): ctx.load_from_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): ctx.reconstruct_persistent_obj,
    }


_ATOMS = (str, int, float, bool, bytes, type(None))


def _check_key(key: Any) -> None:
    """Dict keys and set items are hashed, and hashing a tuple walks it with no cache: a tuple
    sharing its halves at every level would take forever. Official snapshots use plain keys."""
    if isinstance(key, _ATOMS) or (type(key) is tuple and len(key) <= 16 and all(isinstance(k, _ATOMS) for k in key)):
        return
    raise NetworkFormatError(f"a dict key or set item is a {type(key).__name__}; official snapshots use plain keys.")


# typeshed's stub of the pure-Python unpickler leaves out its opcode handlers (load_build, load_dict, ...).
_PURE_UNPICKLER: Any = pickle._Unpickler


class _SnapshotUnpickler(pickle._Unpickler):  # pure-Python unpickler: its opcodes can be vetted
    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    stack: list[Any]  # the pure unpickler's working stack (not in typeshed's stub)

    def __init__(self, file: BinaryIO, ctx: _LoadContext) -> None:
        super().__init__(file)
        self.ctx = ctx
        self.allowed = _allowed(ctx)

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise _Refused(f"references the global {f'{module}.{name}'[:200]!r}")
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("uses a pickle persistent id")

    def _load_ext(self) -> None:
        raise _Refused("uses the pickle extension registry (EXT opcodes)")

    def _load_inst(self) -> None:
        raise _Refused("uses the protocol-0 INST/OBJ opcodes")

    def _load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if not _build_allowed(inst, state):
            kind = "numpy dtype" if isinstance(inst, np.dtype) else type(inst).__name__
            raise _Refused(f"applies __setstate__ (pickle BUILD) to a {kind} in an unexpected way")
        _PURE_UNPICKLER.load_build(self)

    def _load_reduce(self) -> None:
        args = self.stack[-1]
        self.ctx.charge(1 + sum(len(a) for a in args if isinstance(a, (dict, list, tuple, set, frozenset, str, bytes)))
                        if isinstance(args, tuple) else 1)
        _PURE_UNPICKLER.load_reduce(self)

    def _load_setitem(self) -> None:
        _check_key(self.stack[-2])
        _PURE_UNPICKLER.load_setitem(self)

    # After MARK the pure unpickler starts a fresh ``self.stack``: it holds exactly the marked items.
    def _load_setitems(self) -> None:
        for key in self.stack[::2]:
            _check_key(key)
        _PURE_UNPICKLER.load_setitems(self)

    def _load_additems(self) -> None:
        for item in self.stack:
            _check_key(item)
        _PURE_UNPICKLER.load_additems(self)

    def _load_frozenset(self) -> None:
        for item in self.stack:
            _check_key(item)
        _PURE_UNPICKLER.load_frozenset(self)

    def _load_dict(self) -> None:
        for key in self.stack[::2]:
            _check_key(key)
        _PURE_UNPICKLER.load_dict(self)

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _load_ext
    for _op in (pickle.INST, pickle.OBJ):
        dispatch[_op[0]] = _load_inst
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    dispatch[pickle.ADDITEMS[0]] = _load_additems
    dispatch[pickle.FROZENSET[0]] = _load_frozenset
    dispatch[pickle.DICT[0]] = _load_dict
    del _op


def _read_source(source: Any, storage_options: dict | None) -> tuple[bytes, str]:
    """The whole pickle as bytes (size checked before reading) and a label naming it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        check_size(len(data), MAX_PICKLE_BYTES, "the pickle data", "a StyleGAN3 snapshot")
        return data, "the pickle data"
    if isinstance(source, (str, os.PathLike)):
        path = str(os.fspath(source))
        fs, fs_path = fsspec.core.url_to_fs(path, **(storage_options or {}))
        return read_capped(fs, fs_path, MAX_PICKLE_BYTES, repr(path), "a StyleGAN3 snapshot", follow_symlinks=True), repr(path)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        label = repr(name) if isinstance(name, str) else "the pickle stream"
        data = source.read(MAX_PICKLE_BYTES + 1)
        check_size(len(data), MAX_PICKLE_BYTES, label, "a StyleGAN3 snapshot")
        return data, label
    raise TypeError(f"read_official_pickle needs a path, URL, bytes or a binary file, not {type(source).__name__}.")


def _load(data: bytes, label: str) -> dict:
    head = data[:2]  # the PROTO opcode, which every Python 3 pickle starts with
    if len(head) < 2 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        hint = " (a zip archive, such as a torch.save file)" if head.startswith(b"PK") else ""
        raise NetworkFormatError(
            f"{label} is not a pickle{hint}: it starts with {head!r}. "
            "Pass the network-snapshot.pkl that StyleGAN3 training wrote."
        )
    try:
        count, text = scan_pickle(data, MAX_PICKLE_OBJECTS)  # before any object exists
    except NetworkFormatError as exc:
        raise NetworkFormatError(f"{label}: {exc}") from None
    if count > MAX_PICKLE_OBJECTS:
        raise NetworkFormatError(f"{label}: {_too_many_objects()}")
    ctx = _LoadContext(len(data), MAX_PICKLE_OBJECTS - count, MAX_PICKLE_TEXT_BYTES - text)
    try:
        obj = _SnapshotUnpickler(io.BytesIO(data), ctx).load()
    except _Refused as exc:
        raise UnsafePickleError(
            f"{label} {exc}, which an official StyleGAN3 snapshot never needs; "
            f"refusing to load it (nothing in it was executed). {_ADVICE}"
        ) from None
    except NetworkFormatError as exc:
        raise NetworkFormatError(f"{label}: {exc}") from None
    except Sg3ArchiveError:
        raise
    except Exception as exc:  # MemoryError and RecursionError included: always one typed line
        raise NetworkFormatError(
            f"{label} is not a readable StyleGAN3 snapshot pickle ({type(exc).__name__}: {str(exc)[:200]}); "
            "it may be truncated or not a pickle at all. Copy it again from its source."
        ) from None
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
    file that is not a (complete) snapshot pickle, or that declares more data than it holds.
    The file is read whole (at most ``MAX_PICKLE_BYTES``), it may hold at most
    ``MAX_PICKLE_OBJECTS`` opcodes (counted before anything is built), and the work of reading it
    is bounded by its size.
    """
    data, label = _read_source(source, storage_options)
    return _load(data, label)
