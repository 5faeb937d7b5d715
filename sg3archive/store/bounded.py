"""Reading an archive's small files as untrusted input: bounded in size, regular files only, never
through a symlink or out of the archive; and refusing Parquet shards whose footers are absurd.

Archives are read by machines that did not write them. Every metadata file (``archive.json``,
manifest generations, the codec's ``codec.json``/``codec.safetensors``, audit history records) is
read with :func:`read_bounded`: its size is asked first (``fs.info``) and a file over the cap is
never read; on a local disk it must be a regular file reached without following a symlink, whose
real path lies inside the archive. Shards are checked with :func:`check_shard_footer` before any
row is decoded: the rows and decoded sizes their footers declare must be plausible for the file's
size.

The caps (bytes):

* ``archive.json``: :data:`ARCHIVE_FILE_CAP` (1 MiB; a real one is under 2 KB);
* a manifest generation: :data:`MANIFEST_CAP` (16 MiB; ~200 bytes a shard, so ~80,000 shards,
  tens of millions of images at the default shard size);
* ``codec.json``: :data:`CODEC_JSON_CAP` (1 MiB); ``codec.safetensors``: :data:`CODEC_ARRAYS_CAP`
  (256 MiB; the bundled one is 1.6 MB, a 512-wide, 16-layer model about 10 MB);
* an audit history record: :data:`HISTORY_RECORD_CAP` (16 MiB);
* a shard footer: :data:`FOOTER_CAP` (16 MiB).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sg3archive.store.format import ArchiveFormatError

MiB = 1 << 20
ARCHIVE_FILE_CAP = 1 * MiB
MANIFEST_CAP = 16 * MiB
CODEC_JSON_CAP = 1 * MiB
CODEC_ARRAYS_CAP = 256 * MiB
HISTORY_RECORD_CAP = 16 * MiB
FOOTER_CAP = 16 * MiB

# Shard plausibility. Every row of either table kind holds at least one byte of its own in the file
# (ids and hashes are unique), so more declared rows than bytes is a lie. A row group's decoded size
# may exceed the file's size by compression, but not by more than SHARD_EXPANSION times (real
# shards: about 1-3x; payloads and hashes do not compress); and no row group decodes to more than
# ROW_GROUP_BYTES_CAP (a real one of 8192 rows is a few MB).
SHARD_ROWS_CAP = 1 << 24
SHARD_EXPANSION = 64
SHARD_EXPANSION_SLACK = 1 * MiB
ROW_GROUP_BYTES_CAP = 256 * MiB
PARQUET_MAGIC = b"PAR1"
THRIFT_CONTAINER_CAP = 1 << 20  # elements of any one list in a footer (columns, row groups)


class UnsafeArchiveFileError(ArchiveFormatError):
    """A file of an archive is not a regular file inside it (a symlink, a folder, a FIFO, a path
    leading out of the archive), or is larger than such a file can legitimately be."""


class ShardRefusedError(ArchiveFormatError):
    """A shard is not read: its file or its Parquet footer is not what a real shard has.

    Attributes:
        name: the shard's file name; ``why``: what is wrong, in a few words;
        unreadable: True when it is no Parquet file at all (rather than an absurd one).
    """

    def __init__(self, name: str, why: str, archive: str | None = None, unreadable: bool = False) -> None:
        audit = f"sg3archive audit {archive}" if archive else "sg3archive audit ARCHIVE"
        super().__init__(f"shard {name} is refused: {why}; the archive is damaged or was tampered with "
                         f"(`{audit}` lists every damaged shard)")
        self.name, self.why, self.unreadable = name, why, unreadable


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk (where symlinks and FIFOs exist)."""
    return isinstance(fs, LocalFileSystem)


def check_inside(path: str, root: str, what: str) -> str:
    """The real path of local ``path``, after checking that it lies inside the real path of
    ``root`` and that its last component is not a symlink (UnsafeArchiveFileError otherwise)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found ({path})") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeArchiveFileError(
            f"{what} ({path}) is a symlink; archive files must be regular files inside the archive "
            "(copy the file in place of the link)")
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise UnsafeArchiveFileError(
            f"{what} ({path}) lies outside the archive {root} (its real path is {real}); "
            "archive files must be regular files inside the archive")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeArchiveFileError(f"{what} ({path}) is not a regular file")
    return real


def file_size(fs: fsspec.AbstractFileSystem, path: str, root: str | None, what: str) -> int:
    """The size of a regular file of the archive, checked as :func:`read_bounded` describes,
    without reading it. FileNotFoundError when it does not exist."""
    if is_local(fs):
        if root is not None:
            check_inside(path, root, what)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeArchiveFileError(f"{what} ({path}) is not a regular file")
        return st.st_size
    fs.invalidate_cache(path)
    info = fs.info(path)
    if info.get("type") != "file":
        raise UnsafeArchiveFileError(f"{what} ({path}) is a {info.get('type')}, not a file")
    size = info.get("size")
    if not isinstance(size, int) or size < 0:
        raise UnsafeArchiveFileError(f"{what} ({path}): its store reports no size ({size!r})")
    return size


def read_bounded(fs: fsspec.AbstractFileSystem, path: str, cap: int, what: str, root: str | None = None) -> bytes:
    """All bytes of one small archive file, never more than ``cap``.

    Args:
        fs, path: the file on its filesystem.
        cap: the most bytes such a file may hold; a larger one is refused before it is read.
        what: how messages name the file ("archive.json", "manifest generation 7").
        root: the archive's root on ``fs``; on a local disk the file's real path must lie inside
            it and the file itself must not be a symlink.

    Raises:
        FileNotFoundError: no such file.
        UnsafeArchiveFileError: not a regular file (inside the archive), or over ``cap``.
    """
    size = file_size(fs, path, root, what)
    if size > cap:
        raise UnsafeArchiveFileError(
            f"{what} ({path}) is {_human(size)}, over the {_human(cap)} such a file may hold; "
            "the archive is damaged or was tampered with")
    if is_local(fs):
        data = _read_local(path, cap, what)
    else:
        data = fs.cat_file(path, start=0, end=cap + 1)
    if len(data) > cap:
        raise UnsafeArchiveFileError(f"{what} ({path}) grew past {_human(cap)} while it was read")
    return data


def _read_local(path: str, cap: int, what: str) -> bytes:
    """Read at most ``cap + 1`` bytes of a local regular file, opened without following a symlink
    and without blocking (a FIFO swapped in after the check is refused, never waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeArchiveFileError(f"{what} ({path}) is a symlink") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafeArchiveFileError(f"{what} ({path}) is not a regular file")
        return f.read(cap + 1)


def read_bounded_json(fs: fsspec.AbstractFileSystem, path: str, cap: int, what: str, root: str | None = None) -> Any:
    """:func:`read_bounded` then JSON; ArchiveFormatError naming the file when it is not JSON."""
    raw = read_bounded(fs, path, cap, what, root)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ArchiveFormatError(f"{what} ({path}) is not valid JSON ({exc})") from None


# -- shards -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardFooter:
    """What a checked shard's footer declares: ``rows``, its ``metadata`` (pyarrow
    FileMetaData) and the file's ``size``."""

    rows: int
    metadata: pq.FileMetaData
    size: int

    def column_bytes(self, column: str) -> int:
        """Bytes the column's chunks take in the file (compressed, as stored), summed over row
        groups; 0 if the shard has no such column."""
        total = 0
        for i in range(self.metadata.num_row_groups):
            group = self.metadata.row_group(i)
            for j in range(group.num_columns):
                chunk = group.column(j)
                if chunk.path_in_schema == column:
                    total += chunk.total_compressed_size
        return total


def read_shard_footer(fs: fsspec.AbstractFileSystem, path: str, size: int, name: str) -> ShardFooter:
    """Read and check the footer of the shard ``path`` (``size`` bytes, already known to be a
    regular file of the archive); ShardRefusedError when it is absurd or not Parquet."""
    if size < 12:
        raise ShardRefusedError(name, f"{size} bytes is too small for a Parquet file", unreadable=True)
    tail = fs.cat_file(path, start=size - 8, end=size)
    footer_len = struct.unpack("<I", tail[:4])[0]
    if tail[4:] != PARQUET_MAGIC:
        raise ShardRefusedError(name, "it is not a Parquet file (no PAR1 at its end)", unreadable=True)
    if footer_len > min(FOOTER_CAP, size - 12):
        raise ShardRefusedError(name, f"its footer claims {_human(footer_len)} in a {_human(size)} file")
    raw = fs.cat_file(path, start=size - 8 - footer_len, end=size)
    try:
        metadata = pq.ParquetFile(pa.BufferReader(_footer_only(raw)), thrift_string_size_limit=FOOTER_CAP,
                                  thrift_container_size_limit=THRIFT_CONTAINER_CAP).metadata
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ShardRefusedError(name, f"its Parquet footer does not parse ({why})", unreadable=True) from None
    check_footer(metadata, size, name)
    return ShardFooter(rows=metadata.num_rows, metadata=metadata, size=size)


def _footer_only(raw: bytes) -> bytes:
    """A minimal buffer pyarrow parses as a Parquet file holding just this footer (magic, footer
    bytes, length, magic): the footer's offsets into the data are not followed by read_metadata."""
    return PARQUET_MAGIC + raw


def check_footer(metadata: pq.FileMetaData, size: int, name: str) -> None:
    """Refuse a footer whose declared rows or decoded sizes no real shard of ``size`` bytes has."""

    def refuse(why: str) -> ShardRefusedError:
        return ShardRefusedError(name, why)

    rows, groups = metadata.num_rows, metadata.num_row_groups
    if rows < 0 or rows > min(size, SHARD_ROWS_CAP):
        raise refuse(f"its footer declares {rows:,} rows in a {_human(size)} file")
    if groups > max(1, rows):
        raise refuse(f"its footer declares {groups:,} row groups for {rows:,} rows")
    declared, total = 0, 0
    for i in range(groups):
        group = metadata.row_group(i)
        if group.num_rows < 0:
            raise refuse(f"row group {i} declares {group.num_rows} rows")
        declared += group.num_rows
        decoded = max(group.total_byte_size,
                      sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)))
        if decoded > ROW_GROUP_BYTES_CAP:
            raise refuse(f"row group {i} declares {_human(decoded)} decoded (the most is {_human(ROW_GROUP_BYTES_CAP)})")
        total += decoded
    if declared != rows:
        raise refuse(f"its row groups hold {declared:,} rows, its footer says {rows:,}")
    if total > SHARD_EXPANSION * size + SHARD_EXPANSION_SLACK:
        raise refuse(f"its footer declares {_human(total)} decoded from a {_human(size)} file")
