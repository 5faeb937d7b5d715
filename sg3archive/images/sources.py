"""Where images come from: naming sources (local paths and fsspec URLs), listing folders, buckets
and URI lists, and reading one file's bytes.

Listing (:func:`iter_sources`) streams: it never builds the full list of a prefix. A folder is
walked with ``fs.walk`` in this fixed order: a folder's own files in sorted name order, then its
subfolders in sorted name order, depth first (so ``a/x.png`` comes after ``b.png``; the order is
the same on every run and every backend, but it is not a global sort of the URLs). Names starting
with ``.`` (hidden files and folders, macOS ``._*`` resource forks) are always skipped.

Sources (:func:`iter_sources`, :func:`read_bytes`): local paths are read through the local
filesystem directly, never parsed as fsspec URLs (``a::b.png`` stays one name); any name the file
system allows is listed, including names that are not UTF-8 (as ``surrogateescape`` strings);
only regular files are read, so a FIFO, socket or device named ``*.png`` is refused with a reason,
never opened for blocking reads.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sg3archive.images.errors import ImageRejected
from sg3archive.images.limits import DEFAULT_MAX_BYTES, human_bytes

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "avif"})
URI_LIST_SUFFIXES = (".txt", ".lst")


# -- where a source lives ---------------------------------------------------------------------
# "proto://…" or fsspec's chaining "proto::…" at the start of a string.
_URL_START = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)(://|::)")
_LOCAL_PROTOCOLS = ("file", "local")


def local_path(url: str) -> str | None:
    """The absolute local path ``url`` names, or None when it is a remote (or chained) URL.

    Local paths never go through fsspec's URL parsing, whose ``::`` chaining would cut
    ``a::b.png`` in two: a string is local when it has no ``proto://`` or ``proto::`` prefix, when
    it is a ``file://``/``local://`` URL (everything after the scheme is the path, whatever
    characters follow), or when its ``proto::`` prefix names no fsspec protocol (``a::b.png``)
    or the whole string names an existing local file.
    """
    match = _URL_START.match(url)
    local_fs = LocalFileSystem
    if match is None:
        return local_fs._strip_protocol(url)
    protocol, separator = match.group(1).lower(), match.group(2)
    if separator == "://":
        if protocol in _LOCAL_PROTOCOLS:
            return local_fs._strip_protocol("/" + url[match.end():].lstrip("/"))
        return None
    if protocol not in fsspec.available_protocols() or os.path.lexists(url):
        return local_fs._strip_protocol(url)
    return None


def filesystem_for(url: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` for a source URL: local paths (:func:`local_path`) on the local filesystem
    object directly, anything else through ``fsspec.core.url_to_fs``."""
    path = local_path(url)
    if path is not None:
        return fsspec.filesystem("file", **(storage_options or {})), path
    return fsspec.core.url_to_fs(url, **(storage_options or {}))


_FILE_KINDS = (
    (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
)


def file_kind(mode: int) -> str:
    """What a ``st_mode`` names: ``"regular file"``, ``"FIFO"``, ``"socket"``, ``"directory"``, …"""
    if stat.S_ISREG(mode):
        return "regular file"
    return next((name for test, name in _FILE_KINDS if test(mode)), "special file")


def _require_regular(mode: int, url: str) -> None:
    if not stat.S_ISREG(mode):
        raise ImageRejected(f"not a regular file ({file_kind(mode)}); only regular files are read", url)


# -- listing ----------------------------------------------------------------------------------
def iter_sources(
    src: str,
    *,
    pattern: str | None = None,
    recursive: bool = True,
    uri_list: bool = False,
    storage_options: dict | None = None,
) -> Iterator[str]:
    """Yield the URLs of the images a source names, one at a time, in a deterministic order.

    Args:
        src: a folder or bucket prefix (local path, ``file://``, ``s3://``, any fsspec URL); or a
            text file with one URI per line (when it ends in ``.txt``/``.lst`` or ``uri_list``);
            or one image file.
        pattern: a glob relative to ``src`` (``*``, ``?``, ``[...]``, ``**`` for any depth, e.g.
            ``"**/*.png"``), matched case-sensitively against each file's relative path. Without
            it files are kept by their suffix (:data:`IMAGE_SUFFIXES`, any case).
        recursive: without ``pattern``, whether to descend into subfolders; a pattern decides
            its own depth.
        uri_list: read ``src`` as a URI list whatever its suffix.
        storage_options: passed to fsspec (credentials, endpoint, …).

    Yields full URLs (``fs.unstrip_protocol``, e.g. ``file:///data/a.png``, ``s3://b/k.png``).
    A URI list yields its entries in file order, skipping blank lines and lines starting with
    ``#``; entries with a protocol (``s3://…``) are yielded as written, other entries are paths on
    the list's own filesystem, relative ones resolved against the list's folder. Entries are not
    checked for existence here (reading them is).

    Names are yielded as Python strings whatever bytes the file system holds: a local name that
    is not UTF-8 carries its undecodable bytes as lone surrogates (``os.fsdecode``'s
    ``surrogateescape``); ``format.exact_name`` and ``os.fsencode`` give the bytes back. Local
    entries that are not regular files (a FIFO, socket or device, even named ``*.png``) are
    yielded too, so that reading them records why they were not archived; a URI list must itself
    be a regular file (it is read more than once).

    Raises:
        FileNotFoundError: ``src`` is no file, folder or non-empty prefix, or a URI list that is
            not a regular file.
    """
    fs, path = filesystem_for(src, storage_options)
    local = local_path(src) is not None
    fs.invalidate_cache(path)  # another process may have written since a listing was cached
    is_dir = fs.isdir(path)
    if uri_list or (src.lower().endswith(URI_LIST_SUFFIXES) and not is_dir):
        if local and os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise FileNotFoundError(
                f"URI list {src!r} is a {file_kind(os.stat(path).st_mode)}, not a regular file; "
                "write the list to a file first"
            )
        if not fs.isfile(path):
            raise FileNotFoundError(
                f"URI list {src!r} not found; check the path (and storage_options for remote stores)"
            )
        return _iter_uri_list(fs, path)
    if is_dir:
        return _iter_folder(fs, path, pattern, recursive)
    if fs.isfile(path) or (local and os.path.exists(path)):
        return iter([fs.unstrip_protocol(path)])
    raise FileNotFoundError(
        f"source {src!r} not found: it is no file, folder or non-empty prefix; check the path "
        "(and storage_options for remote stores)"
    )


def _iter_uri_list(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    # Undecodable bytes (a list written by ``find`` over non-UTF-8 names) stay as lone surrogates.
    with fs.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape") as f:
        for line in f:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if "://" in entry:
                yield entry
            else:
                yield fs.unstrip_protocol(posixpath.normpath(posixpath.join(parent, entry)))


def _iter_folder(fs: fsspec.AbstractFileSystem, path: str, pattern: str | None, recursive: bool) -> Iterator[str]:
    base = path.rstrip("/") or path
    if pattern is not None:
        pattern = pattern.removeprefix("./").lstrip("/")
        matcher = _glob_regex(pattern)
        maxdepth = None if "**" in pattern else pattern.count("/") + 1
    else:
        matcher = None
        maxdepth = None if recursive else 1

    def raise_listing_error(exc: OSError) -> None:
        raise exc

    for root, dirs, files in fs.walk(base, maxdepth=maxdepth, on_error=raise_listing_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # walk visits dirs in this order
        rel_root = root[len(base) :].strip("/") if root.startswith(base) else root
        for name in sorted(files):
            if not name or name.startswith("."):
                continue
            if matcher is not None:
                if not matcher.fullmatch(posixpath.join(rel_root, name)):
                    continue
            elif "." not in name or name.rpartition(".")[2].lower() not in IMAGE_SUFFIXES:
                continue
            yield fs.unstrip_protocol(posixpath.join(root, name))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over ``/``-separated relative paths as a regex: ``**/`` any number of folders."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


# -- reading ----------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` as 64 lowercase hex digits (the content hash archives record)."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(url: str, storage_options: dict | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of one file, refusing files over ``max_bytes`` (checked by size first, when the
    filesystem reports one, so an oversized file is never downloaded).

    Only regular files are read. A local file is ``stat``-ed before it is opened and ``fstat``-ed
    after (opened with ``O_NONBLOCK``, so even a FIFO swapped in between never blocks): a FIFO,
    socket, device or directory is refused, never read. Symbolic links are followed, as listing
    does; what counts is the kind of file they lead to. Local paths are opened directly, never
    parsed as fsspec URLs (:func:`local_path`).

    Raises:
        FileNotFoundError: no such file.
        ImageRejected: the file is larger than ``max_bytes``, or not a regular file.
    """
    path = local_path(url)
    if path is not None:
        return _read_local(path, url, max_bytes)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        info = fs.info(path)  # one request: kind and size
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{url}: file not found; check the URL (and storage_options for remote stores)"
        ) from None
    except (NotImplementedError, OSError, TypeError):
        info = {}
    kind, size = info.get("type"), info.get("size")
    if kind not in (None, "file"):
        raise ImageRejected(f"not a regular file ({kind}); only regular files are read", url)
    if not isinstance(size, int):
        size = None
    if size is not None and size > max_bytes:
        raise ImageRejected(f"file is {human_bytes(size)}, over the {human_bytes(max_bytes)} limit (max_bytes)", url)
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageRejected(f"file is over the {human_bytes(max_bytes)} limit (max_bytes)", url)
    return data


def _read_local(path: str, url: str, max_bytes: int) -> bytes:
    """:func:`read_bytes` for a local path: stat, open without blocking, fstat, read."""
    try:
        _require_regular(os.stat(path).st_mode, url)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{url}: file not found; check the path") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        _require_regular(info.st_mode, url)
        if info.st_size > max_bytes:
            raise ImageRejected(
                f"file is {human_bytes(info.st_size)}, over the {human_bytes(max_bytes)} limit (max_bytes)", url)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageRejected(f"file is over the {human_bytes(max_bytes)} limit (max_bytes)", url)
    return data

