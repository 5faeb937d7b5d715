"""Reading an archive's small files as untrusted input: bounded in size, regular files only, never
through a symlink or out of the archive; and refusing Parquet shards whose footers are absurd.

Archives are read by machines that did not write them. Every metadata file (``archive.json``,
manifest generations, the codec's ``codec.json``/``codec.safetensors``, audit history records) is
read with :func:`read_bounded`: its size is asked first (``fs.info``) and a file over the cap is
never read; on a local disk it must be a regular file reached without following a symlink, whose
real path lies inside the archive. Shards are checked before any row is
decoded: the rows and decoded sizes their footers declare must be plausible for the file's size
(:func:`read_shard_footer`); the columns the format requires must be required in the file and hold
no nulls (:func:`check_shard_schema`); and what the string and binary columns would take once
read must be plausible too (:func:`check_shard_values`): a value stored once in a Parquet
dictionary and referenced by every row takes a few bytes in the file and rows × its length in
memory, so it is measured on the dictionary, never expanded.

Writers never write through a link: every archive folder a writer creates files in is checked by
:func:`own_folder` first (on a local disk: no symlink, real path inside the archive).

JSON read from an archive refuses ``NaN`` and ``Infinity`` (:func:`loads_strict`): no value of an
archive file is one, and Python's ``json`` would otherwise read them as floats.

The caps (bytes):

* ``archive.json``: :data:`ARCHIVE_FILE_CAP` (1 MiB; a real one is under 2 KB);
* a manifest generation: :data:`MANIFEST_CAP` (16 MiB; ~200 bytes a shard, so ~80,000 shards,
  tens of millions of images at the default shard size);
* ``codec.json``: :data:`CODEC_JSON_CAP` (1 MiB); ``codec.safetensors``: :data:`CODEC_ARRAYS_CAP`
  (256 MiB; the bundled one is 1.6 MB, a 512-wide, 16-layer model about 10 MB);
* an audit history record: :data:`HISTORY_RECORD_CAP` (16 MiB);
* a shard footer: :data:`FOOTER_CAP` (16 MiB);
* a shard's string and binary columns as read (every row's value, dictionary values counted once
  per row that uses them): at most :data:`SHARD_EXPANSION` × the file's size +
  :data:`SHARD_EXPANSION_SLACK` (64 × size + 1 MiB) in all, and each value at most its column's
  cap in :data:`VALUE_CAPS` (checked on dictionary values; a plain chunk counts with its declared
  decoded size, which bounds its values, and is not read): ``payload`` 1 MiB (a real one is a few
  hundred bytes); ``source_uri``, ``source_name``, ``source_root``, ``source_uri_bytes`` and a failure's ``reason``
  64 KiB (far over any path limit); ``fit`` 1 KiB (a JSON box of ~100 bytes); ``recon_thumb``,
  ids, hashes, fingerprints, ``mode``, ``format``, ``profile``, ``stage`` and ``settings_key``
  256 bytes (a real one is at most 64). A column the format does not know: :data:`VALUE_CAP_OTHER`.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sg3archive.images.limits import DEFAULT_MAX_BYTES
from sg3archive.store.format import ArchiveFormatError, schema_for

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

# The longest value each string/binary column may hold (bytes); see the module docstring.
KiB = 1 << 10
VALUE_CAPS = {
    "payload": 1 * MiB,
    "source_uri": 64 * KiB, "source_name": 64 * KiB, "source_root": 64 * KiB, "source_uri_bytes": 64 * KiB,
    "reason": 64 * KiB,
    "fit": 1 * KiB, "contract": 1 * KiB,
    "image_data": DEFAULT_MAX_BYTES,  # a classical coding, or an original's bytes (compress reads at most this)
    **{c: 256 for c in ("id", "source_sha256", "payload_sha256", "recon_thumb", "mode", "format", "profile",
                        "encoder_fingerprint", "generator_fingerprint", "codec_hash", "settings_key", "stage",
                        "representation", "image_sha256", "image_codec")},
}
VALUE_CAP_OTHER = 64 * KiB
SMALL_VALUES = 256  # values' bytes under which the cheap bounds in _measure are used as they are


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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a value an archive file holds")


def loads_strict(raw: bytes | str) -> Any:
    """JSON of an archive file, refusing ``NaN``, ``Infinity`` and ``-Infinity`` (ValueError),
    which Python's json would read as floats that no field of an archive file may be."""
    return json.loads(raw, parse_constant=_no_constant)


def read_bounded_json(fs: fsspec.AbstractFileSystem, path: str, cap: int, what: str, root: str | None = None) -> Any:
    """:func:`read_bounded` then JSON (:func:`loads_strict`); ArchiveFormatError naming the file
    when it is not JSON."""
    raw = read_bounded(fs, path, cap, what, root)
    try:
        return loads_strict(raw)
    except (ValueError, RecursionError) as exc:
        raise ArchiveFormatError(f"{what} ({path}) is not valid JSON ({exc})") from None


# -- folders writers write in ------------------------------------------------------------------
def own_folder(fs: fsspec.AbstractFileSystem, root: str, folder: str, archive: str | None = None) -> str:
    """Make sure the archive folder ``folder`` (relative to the archive's ``root``: ``_plans``,
    ``_plans/<run>``, ``shards``, ``_manifest``, ``codec``, ``_audit``) is the archive's own before
    anything is written in it, creating what is missing; returns its path on ``fs``.

    On a local disk each part of ``folder`` must be a real folder, not a symlink (a link would send
    writes outside the archive), and its real path must lie inside the archive's real path; missing
    parts are created with ``os.mkdir``, which never follows a link. The archive root itself may be
    reached through a link (the user chose that path). Elsewhere (object stores have no links) the
    folder is made with ``fs.makedirs``.

    Raises:
        UnsafeArchiveFileError: a part is a symlink, not a folder, or lies outside the archive.
    """
    root = root.rstrip("/")
    parts = [p for p in folder.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"archive folder {folder!r} is not a plain relative path")
    path = "/".join([root, *parts])
    if not is_local(fs):
        fs.makedirs(path, exist_ok=True)
        return path
    shown = (archive or root).rstrip("/")
    os.makedirs(root, exist_ok=True)
    top = os.path.realpath(root)
    current, name = root, shown
    for part in parts:
        current, name = f"{current}/{part}", f"{name}/{part}"
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchiveFileError(
                f"{name} is a symlink (to {os.readlink(current)}); an archive's folders must be its own: "
                "remove the link")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchiveFileError(f"{name} is not a folder; an archive's folders must be its own: remove it")
        real = os.path.realpath(current)
        if os.path.commonpath([real, top]) != top:
            raise UnsafeArchiveFileError(
                f"{name} lies outside the archive (its real path is {real}); an archive's folders must be "
                "its own: remove the link")
    return path


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


def check_shard_schema(metadata: pq.FileMetaData, kind: str, name: str) -> None:
    """Refuse a shard of ``kind`` in which a column the format requires (non-nullable in
    :func:`sg3archive.store.format.schema_for`) is declared optional, or whose footer statistics
    count nulls in it: readers take such a column's values as present."""
    required = [f.name for f in schema_for(kind) if not f.nullable]
    try:
        declared = metadata.schema.to_arrow_schema()
    except (pa.ArrowException, ValueError) as exc:
        raise ShardRefusedError(name, f"its Parquet schema is unreadable ({' '.join(str(exc).split())})",
                                unreadable=True) from None
    for column in required:
        index = declared.get_field_index(column)
        if index >= 0 and declared.field(index).nullable:
            raise ShardRefusedError(name, f"its column {column!r} may hold nulls (the format requires a value)")
    wanted = set(required)
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            if chunk.path_in_schema not in wanted or not chunk.is_stats_set:
                continue
            stats = chunk.statistics
            if stats is not None and stats.has_null_count and stats.null_count > 0:
                raise ShardRefusedError(name, f"its column {chunk.path_in_schema!r} holds {stats.null_count} null(s) "
                                        f"in row group {i} (the format requires a value)")


def _is_bytes_type(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t)
            or pa.types.is_large_binary(t))


def check_shard_values(fs: fsspec.AbstractFileSystem, path: str, footer: ShardFooter, name: str) -> None:
    """Refuse a shard whose string and binary columns would take, once read, more than
    :data:`SHARD_EXPANSION` × its size + :data:`SHARD_EXPANSION_SLACK`, or that holds a dictionary
    value longer than its column's cap (:data:`VALUE_CAPS`).

    Why: a value stored once in a Parquet dictionary and referenced by every row (a "dictionary
    bomb") takes a few bytes in the file and rows × its length once read, and its footer is honest
    (the dictionary is small), so :func:`check_footer` cannot see it.

    How: the dictionary-encoded string/binary column chunks (by the footer, or by the header of
    their first page) are read as dictionary arrays (pyarrow's ``read_dictionary``), one row group
    at a time, and each dictionary value's length is taken at the rows' indices: memory bounded by
    the file (dictionaries and one index a row), never by what the rows expand to. Plain chunks
    are not read (``inspect`` never decodes payloads): one holds its values' bytes in its pages,
    so it counts with the decoded size its footer declares, which :func:`check_footer` bounds.
    """
    try:
        arrow_schema = footer.metadata.schema.to_arrow_schema()
    except (pa.ArrowException, ValueError) as exc:
        raise ShardRefusedError(name, f"its Parquet schema is unreadable ({' '.join(str(exc).split())})",
                                unreadable=True) from None
    columns = {f.name for f in arrow_schema
               if _is_bytes_type(f.type) or (pa.types.is_dictionary(f.type) and _is_bytes_type(f.type.value_type))}
    if not columns:
        return
    budget = SHARD_EXPANSION * footer.size + SHARD_EXPANSION_SLACK
    total = 0
    try:
        with fs.open(path, "rb") as f:
            # The footer already checked (not a second parse of the file's), so what is read is what
            # was checked.
            parquet = pq.ParquetFile(f, metadata=footer.metadata, read_dictionary=sorted(columns))
            for index in range(footer.metadata.num_row_groups):
                group = footer.metadata.row_group(index)
                read = []
                for j in range(group.num_columns):
                    chunk = group.column(j)
                    if chunk.path_in_schema not in columns:
                        continue
                    if _has_dictionary(f, chunk, footer.size):
                        read.append(chunk.path_in_schema)
                    else:
                        total += max(0, chunk.total_uncompressed_size)
                table = parquet.read_row_group(index, columns=read, use_threads=False) if read else None
                for column in read:
                    assert table is not None  # read is not empty
                    cap = VALUE_CAPS.get(column, VALUE_CAP_OTHER)
                    for array in table.column(column).chunks:
                        size, longest = _measure(array)
                        if longest > cap:
                            raise ShardRefusedError(
                                name, f"its column {column!r} holds a value of {_human(longest)} (the most is "
                                f"{_human(cap)})")
                        total += size
                if total > budget:
                    raise ShardRefusedError(
                        name, f"its text and binary columns expand to over {_human(total)} from a "
                        f"{_human(footer.size)} file (the most is {_human(budget)})")
    except ShardRefusedError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise ShardRefusedError(name, f"its data does not decode ({why})", unreadable=True) from None


# Thrift compact protocol: a PageHeader written by any real writer starts with field 1 (type, an
# i32) in short form: 0x15, then the zigzag varint of the page type.
_PAGE_TYPE_FIELD = 0x15
_PLAIN_PAGE_TYPES = (0, 6)  # zigzag of DATA_PAGE (0) and DATA_PAGE_V2 (3)
_DICTIONARY_ENCODINGS = ("PLAIN_DICTIONARY", "RLE_DICTIONARY")


def _has_dictionary(f: Any, chunk: pq.ColumnChunkMetaData, size: int) -> bool:
    """Whether a column chunk may hold a dictionary page: its footer says so, or the header of the
    page it starts with is not plainly a data page (a footer can hide a dictionary page that the
    reader would still use)."""
    if chunk.has_dictionary_page or any(e in _DICTIONARY_ENCODINGS for e in chunk.encodings):
        return True
    offset = chunk.data_page_offset
    if not 0 <= offset < size - 2:
        return True  # let the read say what is wrong
    f.seek(offset)
    head = f.read(2)
    return not (len(head) == 2 and head[0] == _PAGE_TYPE_FIELD and head[1] in _PLAIN_PAGE_TYPES)


def _measure(chunk: pa.Array) -> tuple[int, int]:
    """(bytes all rows of ``chunk`` take as plain values, longest value) without expanding a
    dictionary array: each dictionary value's length taken at the rows' indices. Cheap bounds
    (the size of the values' buffer) stand in for the exact figures when they are small."""
    values = chunk.dictionary if isinstance(chunk, pa.DictionaryArray) else chunk
    data = values.buffers()[2] if len(values) else None
    stored = data.size if data is not None else 0  # >= every value's length, >= their sum
    lengths = None
    if stored <= SMALL_VALUES:
        longest = stored
    else:
        lengths = pc.cast(pc.binary_length(values), pa.int64())
        longest = pc.max(lengths).as_py() or 0
    if not isinstance(chunk, pa.DictionaryArray):
        return stored, longest
    rows = len(chunk.indices)
    if stored * rows <= SMALL_VALUES:
        return stored * rows, longest
    if lengths is None:
        lengths = pc.cast(pc.binary_length(values), pa.int64())
    return int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0), longest
