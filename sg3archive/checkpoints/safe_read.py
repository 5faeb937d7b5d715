"""Reading network and encoder files of unknown origin: plain files only, size known and capped first.

A directory from elsewhere can name ``../../secret`` as its weights, hold a symlink to
``/dev/zero`` (an endless read), or a file of many gigabytes. Every file sg3archive reads from a
network or encoder directory goes through :func:`read_capped`, which looks at the file's type
and size (``os.lstat`` locally, ``fs.info`` for any fsspec filesystem) before reading a byte.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sg3archive.errors import NetworkFormatError

MAX_PICKLE_BYTES = 2 << 30  # an official snapshot with G, G_ema and D at 1024² is about 0.4 GB
MAX_WEIGHTS_BYTES = 3 << 30  # MAX_PARAMETERS float64 values would be 2 GiB; plus headers
# network.json / encoder.json / a safetensors header. json.loads builds about 20 times its input
# before any type can be checked (``[{},{},...]``: 3 bytes become a 64-byte dict and a pointer), so
# this cap bounds that at about +20 MB. Real files are far smaller: the bundled network.json is
# 835 bytes and encoder.json 1.3 KB; the largest safetensors header, G and D of a conditional
# 1024² stylegan3-r with doubled channels (228 tensors, about 110 bytes each), is about 25 KB.
MAX_JSON_BYTES = 1 << 20
_MB = 1 << 20


def plain_file_name(name: Any, where: str) -> str:
    """``name`` if it names a file directly inside its directory (no separators, no ``..``)."""
    if (
        not isinstance(name, str) or not name or len(name) > 255 or name in (".", "..")
        or any(ch in name for ch in "/\\\0") or name.startswith(".")
    ):
        shown = repr(name)[:80] if isinstance(name, str) else f"a {type(name).__name__}"
        raise NetworkFormatError(
            f"{where} names the weights file {shown}, which is not a plain file name inside its directory; "
            "the directory was tampered with. Re-create it with `sg3archive import-network`."
        )
    return name


def file_size(fs: fsspec.AbstractFileSystem, path: str, where: str, *, follow_symlinks: bool) -> int | None:
    """Size of the regular file ``path`` (None where a remote filesystem does not report it); refuses
    directories, devices, pipes and (unless ``follow_symlinks``) symlinks. Raises FileNotFoundError
    when there is nothing there."""
    if isinstance(fs, LocalFileSystem):
        st = os.stat(path) if follow_symlinks else os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise NetworkFormatError(
                f"{where} is {kind}; network and encoder files must be plain files in their directory. "
                "Copy the real file there (or re-create the directory with sg3archive)."
            )
        return st.st_size
    info = fs.info(path)
    if info.get("type") != "file":
        raise NetworkFormatError(f"{where} is not a regular file (its type is {str(info.get('type'))[:40]!r}).")
    size = info.get("size")
    return size if isinstance(size, int) and size >= 0 else None


def check_size(size: int, cap: int, where: str, what: str) -> None:
    """Refuse a file larger than ``cap`` bytes before reading it."""
    if size > cap:
        raise NetworkFormatError(
            f"{where} is {size / _MB:,.1f} MB, more than the {cap / _MB:,.1f} MB {what} can hold; "
            "it is not the file sg3archive wrote (or it was damaged). Re-export the network from its source."
        )


def read_capped(
    fs: fsspec.AbstractFileSystem, path: str, cap: int, where: str, what: str, *, follow_symlinks: bool = False
) -> bytes:
    """All bytes of the regular file ``path``, refusing it unread when larger than ``cap``."""
    size = file_size(fs, path, where, follow_symlinks=follow_symlinks)
    if size is not None:
        check_size(size, cap, where, what)
    with fs.open(path, "rb") as f:
        data = f.read((cap if size is None else size) + 1)
    check_size(len(data), cap if size is None else size, where, what)
    return data


def read_json_capped(fs: fsspec.AbstractFileSystem, path: str, where: str) -> Any:
    """Parse a small JSON file (``network.json``, ``encoder.json``) of at most ``MAX_JSON_BYTES``, refused
    unread when larger (parsing amplifies it about twentyfold); FileNotFoundError passes through."""
    data = read_capped(fs, path, MAX_JSON_BYTES, where, "a description file")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise NetworkFormatError(f"{where} is not valid JSON ({str(exc)[:200]}); re-create the directory.") from None
