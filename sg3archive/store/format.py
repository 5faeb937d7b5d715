"""The archive's table schemas, the JSON document stored in every shard, the names image rows are
recorded and restored by, and the store's errors.

One row of ``images`` is one archived image: its latent payload plus everything needed to find,
verify and reproduce it. One row of ``failures`` is one source that could not be archived. The
field-by-field meaning is in docs/FORMAT.md; a change to a schema here is a change of
``FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images.thumbs import THUMB_BYTES as THUMB_BYTES
from sg3archive.images.thumbs import THUMB_SHAPE as THUMB_SHAPE
from sg3archive.quality.contract import REPRESENTATIONS

FORMAT_NAME = "sg3archive"
FORMAT_VERSION = 4  # 2: images gained source_name and source_root (nullable; null in version-1 shards)
# 3: images and failures gained source_uri_bytes (nullable; null in older shards and for UTF-8 names)
# 4: the quality contract: images gained the representation, its parts, the contract and the fidelity at the
#    original size (all nullable; null in older shards, whose rows are all latent)
# The key of the one JSON document in each shard's Parquet key-value metadata (as Hugging Face
# datasets use b"huggingface").
METADATA_KEY = b"sg3archive"

KINDS = ("images", "failures")
FAILURE_STAGES = ("list", "read", "decode", "encode", "write")
TRANSFORM_SIZE = 9  # a 3x3 input transform, row-major
# recon_thumb's shape; its one home is sg3archive/images/thumbs.py (re-exported here)

ID_HEX_CHARS = 32

# Columns read to decide what a re-run may skip, in the order of committed_keys()'s tuples.
KEY_COLUMNS = ("source_uri", "source_sha256", "settings_key")
# The same with the exact name of rows whose name is not UTF-8 (exact_keys() reads them).
EXACT_KEY_COLUMNS = ("source_uri", "source_uri_bytes", "source_sha256", "settings_key")

_UTC_MICROS = pa.timestamp("us", tz="UTC")
# The columns of format version 4 (the quality contract), null in older rows (docs/FORMAT.md).
CONTRACT_COLUMNS = ("representation", "image_data", "image_sha256", "image_codec", "image_quality", "latent_bytes",
                    "image_bytes", "contract", "contract_met", "fidelity_psnr", "fidelity_ms_ssim", "fidelity_lpips",
                    "avif_bytes", "avif_quality")
LATENT = "latent"  # the representation of every row before version 4
REPRESENTATION_NAMES = REPRESENTATIONS  # checked on write; their home: sg3archive.quality.contract
_ADDED_NULLABLE = ("source_uri_bytes", *CONTRACT_COLUMNS)  # columns a table may lack (then all null) when written


class ArchiveFormatError(Sg3ArchiveError):
    """A file of the archive (shard, manifest, archive.json) is not in a format this version reads."""


class NewerFormatError(ArchiveFormatError):
    """A file of the archive was written by a newer format version than this sg3archive reads."""


class ArchiveNotFoundError(Sg3ArchiveError):
    """The URL holds no archive (no archive.json)."""


class ArchiveMismatchError(Sg3ArchiveError):
    """An archive already exists at the URL with settings other than the ones asked for."""


class ShardSchemaError(Sg3ArchiveError):
    """A table handed to the store does not match the schema of its kind."""


class CommitConflictError(Sg3ArchiveError):
    """Other writers kept winning the race for the next manifest generation."""


def image_id(source_uri: str, source_sha256: str) -> str:
    """The stable id of an image: the same bytes at the same URI always get the same id.

    ``source_uri`` is the exact URI (:func:`exact_uri`); a name that is not UTF-8 hashes its
    exact bytes (:func:`exact_bytes`), so UTF-8 URIs get the same ids as in every earlier version.
    """
    digest = hashlib.sha256(exact_bytes(f"{source_uri}\n{source_sha256}")).hexdigest()
    return digest[:ID_HEX_CHARS]


# -- names that are not UTF-8 ---------------------------------------------------------------------
# Listing gives every name as a Python str; bytes that are not UTF-8 arrive as lone surrogates
# U+DC80..U+DCFF (surrogateescape). Parquet strings must be UTF-8, so such a row stores a readable,
# reversible form of its strings and the exact URI's bytes in source_uri_bytes (docs/FORMAT.md).
_ESCAPED_BYTE = re.compile(r"%([0-9A-F]{2})")


def is_utf8_text(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 text (no lone surrogates): storable as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def exact_bytes(text: str) -> bytes:
    """The exact bytes of a name or URI: UTF-8, with surrogate-escaped bytes as the raw bytes they
    stand for (``os.fsencode``'s rule on POSIX). Equal to ``text.encode("utf-8")`` for UTF-8 text."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system name yields; kept, not lost
        return text.encode("utf-8", "surrogatepass")


def readable_text(text: str) -> str:
    """``text`` where it is UTF-8, else its :func:`stored_text` form: for messages (failure reasons)."""
    return text if is_utf8_text(text) else stored_text(text)


def stored_text(text: str) -> str:
    """The form a name, root or URI is stored in a row's string column when the row's URI is not
    UTF-8 (:func:`source_columns`): each byte that is not UTF-8 as ``%XX`` (uppercase hex) and each
    ``%`` as ``%25`` — also in the parts that are UTF-8, so the form is readable, valid UTF-8 and
    exactly reversible (:func:`unstored_text`)."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "%":
            out.append("%25")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"%{code - 0xDC00:02X}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass")))
        else:
            out.append(ch)
    return "".join(out)


def unstored_text(stored: str) -> str:
    """Undo :func:`stored_text` for a row whose ``source_uri_bytes`` is set: the exact name as a
    ``surrogateescape`` str (``os.fsencode`` gives its bytes)."""
    parts = _ESCAPED_BYTE.split(stored)
    raw = bytearray()
    for i, part in enumerate(parts):
        raw += bytes([int(part, 16)]) if i % 2 else part.encode("utf-8")
    return raw.decode("utf-8", "surrogateescape")


def exact_uri(row: Mapping[str, Any]) -> str:
    """A row's exact source URI (images or failures): ``source_uri_bytes`` decoded with
    ``surrogateescape`` where set, else ``source_uri`` (rows of every earlier version)."""
    raw = row.get("source_uri_bytes")
    return bytes(raw).decode("utf-8", "surrogateescape") if raw is not None else row["source_uri"]


def exact_name(row: Mapping[str, Any]) -> str:
    """The exact name an image row is restored and selected by, as a ``surrogateescape`` str.

    :func:`row_name` for every row whose name is UTF-8 (``source_uri_bytes`` null or absent:
    every row of format versions 1 and 2); for a row whose name is not UTF-8, its ``source_name``
    with :func:`unstored_text` undone (or the exact URI's path when it has none). ``row`` needs
    ``source_uri``, and ``source_name`` and ``source_uri_bytes`` where the table has them.
    ``os.fsencode(exact_name(row))`` is the original name's bytes.
    """
    name = row.get("source_name")
    if row.get("source_uri_bytes") is None:
        return row_name(name, row["source_uri"])
    return unstored_text(name) if name else uri_path(exact_uri(row))


def exact_keys(table: pa.Table) -> set[tuple[str, str | None, str]]:
    """``(exact source_uri, source_sha256, settings_key)`` of every row of a table holding
    :data:`EXACT_KEY_COLUMNS` (``source_uri_bytes`` may be absent: older readers' tables)."""
    columns = {name: table.column(name).to_pylist() for name in EXACT_KEY_COLUMNS if name in table.column_names}
    raws = columns.get("source_uri_bytes") or [None] * table.num_rows
    uris = [exact_uri({"source_uri": uri, "source_uri_bytes": raw}) for uri, raw in zip(columns["source_uri"], raws)]
    return set(zip(uris, columns["source_sha256"], columns["settings_key"]))


def source_root(src: str, storage_options: dict | None = None) -> str:
    """A compress job's SRC as a full URL without a trailing slash, the form listing gives
    sources in (``examples/images`` → ``file:///…/examples/images``). A local SRC is never parsed
    as an fsspec URL (``a::b`` is a folder name)."""
    from sg3archive.images import filesystem_for

    fs, path = filesystem_for(src, storage_options)
    return fs.unstrip_protocol(path.rstrip("/") or path)


def uri_path(source_uri: str) -> str:
    """A URI's path without scheme or leading slashes; a remote URI keeps its bucket/host
    (``s3://b/k/x.png`` → ``b/k/x.png``, ``file:///data/x.png`` → ``data/x.png``). The name of a
    row that has no ``source_name`` (archives of format version 1)."""
    parts = urlsplit(source_uri)
    if len(source_uri) > 2 and source_uri[1] == ":" and source_uri[0].isalpha():  # C:\x or C:/x
        path = source_uri[2:]
    elif parts.scheme in ("", "file"):
        path = parts.path
    else:
        path = f"{parts.netloc}/{parts.path.lstrip('/')}"
    return path.replace("\\", "/").lstrip("/")


def relative_source_name(root: str, source_uri: str) -> str:
    """The name of ``source_uri`` relative to its compress source ``root`` (both full URLs, as
    :func:`source_root` and listing give them): the path under a folder or prefix; a single-file
    source's file name; a URI-list entry's path under the list's folder, or else
    :func:`uri_path`."""
    if source_uri == root:
        return source_uri.rsplit("/", 1)[-1]
    prefix = root if root.endswith("/") else root + "/"
    if source_uri.startswith(prefix):
        return source_uri[len(prefix):]
    folder = root.rpartition("/")[0]
    if folder and not folder.endswith(":/") and source_uri.startswith(folder + "/"):
        return source_uri[len(folder) + 1:]
    return uri_path(source_uri)


def source_fields(src: str, source_uri: str, storage_options: dict | None = None) -> dict[str, str]:
    """``source_root`` and ``source_name`` of an image row, from the compress job's SRC (exact
    strings; :func:`source_columns` gives what a row stores)."""
    root = source_root(src, storage_options)
    return {"source_root": root, "source_name": relative_source_name(root, source_uri)}


def source_columns(src: str | None, source_uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The name columns of a row for the exact ``source_uri``: ``source_uri`` and
    ``source_uri_bytes``, plus ``source_root`` and ``source_name`` when ``src`` (the compress
    job's SRC) is given (image rows; failure rows have no such columns).

    Strings that are all UTF-8 are stored as they are and ``source_uri_bytes`` is None: exactly
    the rows of earlier versions. Otherwise every one of them is stored as :func:`stored_text` and
    ``source_uri_bytes`` holds the exact URI's bytes.
    """
    texts = {"source_uri": source_uri}
    if src is not None:
        texts.update(source_fields(src, source_uri, storage_options))
    if all(is_utf8_text(t) for t in texts.values()):
        return {**texts, "source_uri_bytes": None}
    return {**{k: stored_text(t) for k, t in texts.items()}, "source_uri_bytes": exact_bytes(source_uri)}


def row_name(source_name: str | None, source_uri: str) -> str:
    """The name a row is listed, selected and restored by: its ``source_name``, or for rows
    written before that column existed, :func:`uri_path` of its URI."""
    return source_name if source_name else uri_path(source_uri)


def images_schema() -> pa.Schema:
    """One row per archived image (docs/FORMAT.md describes every field)."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("source_size", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("fit", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("payload_sha256", pa.string(), nullable=False),
        pa.field("bits", pa.list_(pa.float32()), nullable=False),
        pa.field("profile", pa.string(), nullable=False),
        pa.field("transform", pa.list_(pa.float32()), nullable=True),
        pa.field("psnr", pa.float32(), nullable=True),
        pa.field("ms_ssim", pa.float32(), nullable=True),
        pa.field("lpips", pa.float32(), nullable=True),
        pa.field("recon_thumb", pa.binary(), nullable=False),
        pa.field("encoder_fingerprint", pa.string(), nullable=False),
        pa.field("generator_fingerprint", pa.string(), nullable=False),
        pa.field("codec_hash", pa.string(), nullable=False),
        pa.field("settings_key", pa.string(), nullable=False),
        pa.field("encoded_at", _UTC_MICROS, nullable=False),
        # format version 2; null in rows of version 1
        pa.field("source_name", pa.string(), nullable=True),
        pa.field("source_root", pa.string(), nullable=True),
        # format version 3; null in older rows and wherever the name is UTF-8
        pa.field("source_uri_bytes", pa.binary(), nullable=True),
        # format version 4 (the quality contract); null in older rows (all latent)
        pa.field("representation", pa.string(), nullable=True),  # latent | classical | original
        pa.field("image_data", pa.binary(), nullable=True),  # the classical file or the original's bytes
        pa.field("image_sha256", pa.string(), nullable=True),
        pa.field("image_codec", pa.string(), nullable=True),  # avif | webp, or the original's format
        pa.field("image_quality", pa.int32(), nullable=True),  # the classical coding's quality setting
        pa.field("latent_bytes", pa.int64(), nullable=True),  # bytes per part: the payload ...
        pa.field("image_bytes", pa.int64(), nullable=True),  # ... and image_data
        pa.field("contract", pa.string(), nullable=True),  # the quality contract (JSON) the row was made under
        pa.field("contract_met", pa.bool_(), nullable=True),
        pa.field("fidelity_psnr", pa.float64(), nullable=True),  # restored vs original at the original size
        pa.field("fidelity_ms_ssim", pa.float64(), nullable=True),
        pa.field("fidelity_lpips", pa.float64(), nullable=True),
        pa.field("avif_bytes", pa.int64(), nullable=True),  # the AVIF baseline, where measured
        pa.field("avif_quality", pa.int32(), nullable=True),
    ])


def row_representation(row: Mapping[str, Any]) -> str:
    """A row's representation: ``latent`` for rows written before version 4."""
    return row.get("representation") or LATENT


def failures_schema() -> pa.Schema:
    """One row per source that could not be archived, and at which stage."""
    return pa.schema([
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_size", pa.int64(), nullable=True),
        pa.field("source_sha256", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("settings_key", pa.string(), nullable=False),
        pa.field("failed_at", _UTC_MICROS, nullable=False),
        # format version 3; null in older rows and wherever the name is UTF-8
        pa.field("source_uri_bytes", pa.binary(), nullable=True),
    ])


def schema_for(kind: str) -> pa.Schema:
    """The schema of a table kind ("images" or "failures")."""
    if kind == "images":
        return images_schema()
    if kind == "failures":
        return failures_schema()
    raise ShardSchemaError(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")


def table_metadata(doc: dict[str, Any], kind: str | None = None) -> dict[bytes, bytes]:
    """Parquet key-value metadata holding ``doc`` plus the format name, version and table kind.

    Args:
        doc: JSON-serialisable settings (num_ws, w_dim, default bits, fingerprints, codec hash...).
        kind: the table kind; may instead be given as ``doc["kind"]``.
    """
    out = dict(doc)
    if kind is not None:
        out["kind"] = kind
    if out.get("kind") not in KINDS:
        raise ShardSchemaError(f"metadata needs a table kind, one of {', '.join(KINDS)}; got {out.get('kind')!r}")
    out["format"] = FORMAT_NAME
    out["format_version"] = FORMAT_VERSION
    try:
        text = json.dumps(out, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ShardSchemaError(f"shard metadata must be plain JSON (str, numbers, lists, dicts): {exc}") from exc
    return {METADATA_KEY: text.encode("utf-8")}


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The JSON document of a shard's schema (from ``pq.read_schema`` or a table's ``.schema``)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ArchiveFormatError(f"no {METADATA_KEY.decode()!r} key in the Parquet metadata: not an sg3archive shard")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ArchiveFormatError(f"the {METADATA_KEY.decode()!r} metadata is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ArchiveFormatError(f"the {METADATA_KEY.decode()!r} metadata is not a JSON object")
    check_format_version(doc, "shard")
    return doc


def check_format_version(doc: dict[str, Any], what: str) -> None:
    """Refuse a document from a newer format version (or none); older versions stay readable."""
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArchiveFormatError(f"{what} has no integer format_version ({version!r}); it was not written by sg3archive")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{what} has format_version {version}, newer than this sg3archive reads ({FORMAT_VERSION}); "
            "upgrade sg3archive")


def conform_table(table: pa.Table, kind: str) -> pa.Table:
    """``table`` with the canonical schema of ``kind`` (column order, types, nullability), or an error.

    Columns may come in any order and nullable where the schema says required, as long as they hold
    no nulls; types must match exactly. ``source_uri_bytes`` (version 3) may be left out: it is
    then null (every name UTF-8). Rows are checked for what a type cannot say: image ids,
    3x3 transforms, 8x8x3 thumbnails, failure stages.
    """
    schema = schema_for(kind)
    for name in _ADDED_NULLABLE:  # a writer of an older version's columns: the new one is all null
        if name not in table.column_names and name in schema.names:
            table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    names = set(table.column_names)
    expected = set(schema.names)
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra or len(table.column_names) != len(names):
        raise ShardSchemaError(
            f"{kind} table columns do not match the format: missing {missing}, unexpected {extra}"
            + (", duplicated columns" if len(table.column_names) != len(names) else "")
            + f"; build it with sg3archive.store.format.{kind}_schema()")
    problems = []
    for field in schema:
        column = table.column(field.name)
        if column.type != field.type:
            problems.append(f"{field.name}: {column.type} instead of {field.type}")
        elif not field.nullable and column.null_count:
            problems.append(f"{field.name}: {column.null_count} null value(s) in a required column")
    if problems:
        raise ShardSchemaError(f"{kind} table does not match the format: " + "; ".join(problems))
    table = table.select(schema.names)
    table = pa.Table.from_arrays(table.columns, schema=schema)
    _check_rows(table, kind)
    return table


def _check_rows(table: pa.Table, kind: str) -> None:
    import pyarrow.compute as pc

    if kind == "failures":
        bad = pc.invert(pc.is_in(table.column("stage"), value_set=pa.array(FAILURE_STAGES)))
        if pc.any(bad).as_py():
            stages = sorted(set(pc.filter(table.column("stage"), bad).to_pylist()))
            raise ShardSchemaError(f"failure stage(s) {stages} unknown; expected one of {', '.join(FAILURE_STAGES)}")
        return
    kinds = table.column("representation")
    unknown = pc.and_(pc.is_valid(kinds), pc.invert(pc.is_in(kinds, value_set=pa.array(REPRESENTATION_NAMES))))
    if pc.any(unknown).as_py():
        raise ShardSchemaError(f"representation must be one of {', '.join(REPRESENTATION_NAMES)} (or null: latent)")
    lengths = pc.list_value_length(table.column("transform"))
    if pc.any(pc.not_equal(lengths, TRANSFORM_SIZE)).as_py():
        raise ShardSchemaError(f"transform must hold {TRANSFORM_SIZE} values (3x3 row-major) or be null")
    if pc.any(pc.not_equal(pc.binary_length(table.column("recon_thumb")), THUMB_BYTES)).as_py():
        raise ShardSchemaError(f"recon_thumb must be {THUMB_BYTES} bytes (8x8x3 uint8)")
    ids = table.column("id").to_pylist()
    uris = table.column("source_uri").to_pylist()
    raws = table.column("source_uri_bytes").to_pylist()
    shas = table.column("source_sha256").to_pylist()
    for row, (id_, uri, raw, sha) in enumerate(zip(ids, uris, raws, shas)):
        exact = exact_uri({"source_uri": uri, "source_uri_bytes": raw})
        if id_ != image_id(exact, sha):
            raise ShardSchemaError(
                f"row {row}: id {id_!r} is not image_id(exact source_uri, source_sha256) = {image_id(exact, sha)!r}")
