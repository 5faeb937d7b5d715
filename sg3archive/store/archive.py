"""ArchiveStore: an archive of image latents on any fsspec URL (local path, file://, s3://, memory://).

What lives under the archive root, and who writes, reads and removes it, is listed once: in
:mod:`sg3archive.store.layout` (names) and docs/FORMAT.md (fields).

Writers call :meth:`ArchiveStore.write_shard` for each table, then :meth:`ArchiveStore.commit` once
for the records; readers only ever see committed shards.

Everything read from an archive is untrusted input (sg3archive.store.bounded): metadata files are
read with size caps and must be regular files inside the archive; a shard is read only after its
file and its Parquet footer are checked (:meth:`ArchiveStore.check_shard`). A newest manifest
generation that is damaged is skipped for the newest readable one, and said so in
:attr:`ArchiveStore.damage`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sg3archive.atomic import fsync_folder
from sg3archive.codec import LatentCodec
from sg3archive.errors import Sg3ArchiveError
from sg3archive.store.bounded import (
    ARCHIVE_FILE_CAP,
    ShardFooter,
    ShardRefusedError,
    UnsafeArchiveFileError,
    check_shard_schema,
    check_shard_values,
    file_size,
    own_folder,
    read_bounded_json,
    read_shard_footer,
)
from sg3archive.store.format import (
    EXACT_KEY_COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    KEY_COLUMNS,
    KINDS,
    ArchiveFormatError,
    ArchiveMismatchError,
    ArchiveNotFoundError,
    check_format_version,
    conform_table,
    exact_keys,
    read_metadata,
    schema_for,
    table_metadata,
)
from sg3archive.store.layout import (
    ARCHIVE_FILE,
    AUDIT_DIR,
    CODEC_DIR,
    CODEC_KEY,
    MANIFEST_DIR,
    PLANS_DIR,
    SHARDS_DIR,
    TEMP_PREFIX,
    check_codec_folder,
    codec_folder,
    plans_folder,
)
from sg3archive.store.manifest import (
    Manifest,
    ManifestLog,
    ShardRecord,
    backend_of,
    create_exclusive,
    is_plain_name,
    utc_now,
)

__all__ = ["ArchiveStore", "ArchiveMismatchError", "ArchiveNotFoundError", "ShardRecord", "Manifest",
           "ShardExistsError", "ShardRefusedError", "UnsafeArchiveFileError", "check_shard_name"]

logger = logging.getLogger(__name__)

# Rows are small (a payload of a few hundred bytes, a 192-byte thumbnail, short strings), so a row
# group of this many rows is a few MB: big enough to compress well, small enough to read in part.
ROW_GROUP_ROWS = 8192
BATCH_ROWS = 8192
HASH_CHUNK = 4 << 20
# Columns repeating few distinct values per shard: dictionary-encoded. Everything else (hashes,
# payloads, thumbnails, URIs) is near-unique, where a dictionary only costs.
DICTIONARY_COLUMNS = ("mode", "format", "profile", "encoder_fingerprint", "generator_fingerprint",
                      "codec_hash", "settings_key", "stage", "reason")
# Min/max statistics of large binary columns are useless and bloat every footer.
NO_STATISTICS_COLUMNS = ("payload", "recon_thumb", "fit", "bits", "transform")
# Settings that describe the codec itself, not the job: when two first runs race to create an
# archive, the loser takes the winner's codec, and with it these.
CODEC_SETTINGS = ("codec_hash", "bits")
ExactKey = tuple[str, str | None, str]  # (exact source URI, source_sha256, settings_key)


class ShardExistsError(Sg3ArchiveError, FileExistsError):
    """A shard is written under a name that a file in ``shards/`` already has (never replaced)."""


def check_shard_name(name: str, kind: str) -> str:
    """``name`` if it can name a new ``kind`` shard: a plain file name (no separator, no ``..``,
    not hidden) of the form ``<kind>-<something>.parquet``; ValueError otherwise."""
    if kind not in KINDS:
        raise ValueError(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")
    stem = name.removeprefix(f"{kind}-").removesuffix(".parquet")
    if (not is_plain_name(name) or name.startswith(".") or not name.startswith(f"{kind}-")
            or not name.endswith(".parquet") or not stem):
        raise ValueError(f"shard name {name!r} is not a plain file name of the form {kind}-<name>.parquet")
    return name


_K = TypeVar("_K")  # a committed row's key, as one of the readings of _keys_by_kind returns it


def _plain_json(value: Any, what: str) -> Any:
    """``value`` as JSON reads it back (tuples become lists), so stored and given settings compare equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (str, numbers, bools, None, lists, dicts): {exc}") from exc


def _differing_keys(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the settings that differ between two JSON objects."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(stored) | set(wanted), key=str):
            path = f"{prefix}{key}"
            if key not in stored or key not in wanted:
                out.append(path)
            else:
                out.extend(_differing_keys(stored[key], wanted[key], path + "."))
        return out
    return [] if stored == wanted else [prefix.rstrip(".") or "<settings>"]


class ArchiveStore:
    """One archive: its settings, its committed shards, and writing new ones.

    Build it with :meth:`create` or :meth:`open`. Safe to share between threads and to pickle
    (the filesystem object pickles with its storage options).

    Attributes:
        url: the archive URL as given.
        fs: the fsspec filesystem.
        root: the archive's path on ``fs`` (no protocol, no trailing slash).
        settings: the archive-level settings from archive.json.
    """

    def __init__(self, url: str, fs: fsspec.AbstractFileSystem, root: str, archive_doc: dict[str, Any]) -> None:
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self.archive_doc = archive_doc
        self.settings: dict[str, Any] = archive_doc["settings"]
        self.log = ManifestLog(fs, self.root)
        # Footers of shards already checked (shards are immutable): name -> ShardFooter.
        self._footers: dict[str, ShardFooter] = {}
        self._footers_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_footers"], state["_footers_lock"] = {}, None  # FileMetaData and locks do not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._footers_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArchiveStore({self.url!r})"

    # -- create / open ---------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, settings: dict[str, Any], storage_options: dict[str, Any] | None = None,
               codec: LatentCodec | None = None) -> ArchiveStore:
        """Create an archive at ``url``, or open the one there if its settings are the same (resume).

        Args:
            settings: archive-level settings, plain JSON: fingerprints, codec hash, profile, num_ws,
                w_dim, resolution... They are attached to every shard's metadata too.
            codec: the archive's codec, for a new archive: written to ``codec/<its hash>/`` (whole
                or not at all, never through a link) BEFORE archive.json is created exclusively,
                which names that folder. When another run created the archive first, its codec
                is the archive's: this call's codec folder is removed if it made it and the winner
                names another, and the codec's own settings (:data:`CODEC_SETTINGS`) are the
                winner's; the rest must match. Without ``codec``, archive.json names the folder
                ``codec/<settings' codec_hash>/`` when the caller has already put that codec there;
                otherwise the caller keeps the codec at :attr:`codec_url` itself (``codec/``, the
                layout before content-addressed codecs).

        Raises:
            ArchiveMismatchError: an archive exists there with other settings (names the keys).
        """
        settings = _plain_json(settings, "archive settings")
        if not isinstance(settings, dict):
            raise ValueError("archive settings must be a dict")
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        root = root.rstrip("/")
        if backend_of(fs) == "local":
            for folder in (MANIFEST_DIR, SHARDS_DIR):
                own_folder(fs, root, folder, url)  # creates the root too; never through a link
        doc = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "created_at": utc_now(), "settings": settings}
        ours, made = None, False
        if codec is not None:
            ours, made = cls._write_codec(fs, root, url, codec, storage_options)
            doc[CODEC_KEY] = ours
        else:
            present = cls._present_codec(fs, root, settings)
            if present:
                doc[CODEC_KEY] = present
        path = f"{root}/{ARCHIVE_FILE}"
        if create_exclusive(fs, path, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")):
            logger.info("created archive %s", url)
            return cls(url, fs, root, doc)
        store = cls(url, fs, root, cls._read_archive_doc(fs, path, url))
        ignored: tuple[str, ...] = ()
        if ours is not None:
            theirs = store.archive_doc.get(CODEC_KEY, CODEC_DIR)
            if theirs != ours:
                logger.info("%s was created by another run with codec %s; using it", url, theirs)
                if made:
                    cls._remove_codec(fs, root, ours)
            ignored = CODEC_SETTINGS
        store.check_settings(settings, ignored)
        return store

    def check_settings(self, settings: dict[str, Any], ignored: tuple[str, ...] = ()) -> None:
        """Refuse ``settings`` unless they are this archive's (top-level keys in ``ignored`` aside).

        Raises:
            ArchiveMismatchError: naming every key that differs.
        """
        wanted = _plain_json(settings, "archive settings")
        differing = [k for k in _differing_keys(self.settings, wanted) if k.split(".", 1)[0] not in ignored]
        if differing:
            raise ArchiveMismatchError(
                f"an archive already exists at {self.url} with different settings: {', '.join(differing)}; "
                "use a new URL, or the settings it was created with to resume it")

    @staticmethod
    def _present_codec(fs: fsspec.AbstractFileSystem, root: str, settings: dict[str, Any]) -> str | None:
        """The content-addressed folder of the codec ``settings`` name by hash, when the caller
        has put it in place before creating the archive (a copied codec); None otherwise."""
        digest = settings.get("codec_hash")
        if not isinstance(digest, str):
            return None
        try:
            folder = codec_folder(digest)
        except ValueError:
            return None
        return folder if fs.isfile(f"{root}/{folder}/codec.json") else None

    @staticmethod
    def _write_codec(fs: fsspec.AbstractFileSystem, root: str, url: str, codec: LatentCodec,
                     storage_options: dict[str, Any] | None) -> tuple[str, bool]:
        """Write ``codec`` to its content-addressed folder unless it is there; returns the folder
        (relative to the root) and whether this call made it."""
        folder = codec_folder(codec.hash)
        path = f"{root}/{folder}"
        if backend_of(fs) != "local":
            fs.invalidate_cache(path)
            if fs.exists(f"{path}/codec.json"):
                return folder, False
            codec.save(fs.unstrip_protocol(path), storage_options=storage_options)  # codec.json last
            return folder, True
        top = own_folder(fs, root, CODEC_DIR, url)  # never written through a link out
        if os.path.lexists(path):
            own_folder(fs, root, folder, url)  # a link there is refused, not read through
            return folder, False
        temp = own_folder(fs, root, f"{CODEC_DIR}/{TEMP_PREFIX}{codec.hash[:16]}.{uuid.uuid4().hex[:12]}", url)
        try:
            codec.save(temp)
            for name in os.listdir(temp):
                with open(os.path.join(temp, name), "rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(temp, path)  # whole or not at all; fails if another run put it there first
            except OSError as exc:
                if not os.path.isdir(path) or os.path.islink(path):
                    raise
                logger.debug("codec %s was written by another run (%s)", folder, exc)
                return folder, False
            fsync_folder(top)
            return folder, True
        finally:
            if os.path.isdir(temp) and not os.path.islink(temp):
                shutil.rmtree(temp, ignore_errors=True)

    @staticmethod
    def _remove_codec(fs: fsspec.AbstractFileSystem, root: str, folder: str) -> None:
        """Remove a codec folder this run wrote and the archive does not name (a lost race)."""
        path = f"{root}/{check_codec_folder(folder)}"
        if backend_of(fs) != "local":
            fs.rm(path, recursive=True)
            return
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            fsync_folder(f"{root}/{CODEC_DIR}")

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> ArchiveStore:
        """Open an existing archive; ArchiveNotFoundError if ``url`` holds none."""
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        root = root.rstrip("/")
        return cls(url, fs, root, cls._read_archive_doc(fs, f"{root}/{ARCHIVE_FILE}", url))

    @staticmethod
    def _read_archive_doc(fs: fsspec.AbstractFileSystem, path: str, url: str) -> dict[str, Any]:
        fs.invalidate_cache(path)
        root = path.rsplit("/", 1)[0]
        try:
            doc = read_bounded_json(fs, path, ARCHIVE_FILE_CAP, ARCHIVE_FILE, root)
        except (FileNotFoundError, NotADirectoryError):
            folder = path.rsplit("/", 1)[0]
            what = "is a file, not an archive folder" if fs.isfile(folder) else (
                f"is not an sg3archive archive (no {ARCHIVE_FILE})" if fs.isdir(folder) else "does not exist")
            raise ArchiveNotFoundError(
                f"archive {url} {what}: check the path (and storage_options for a bucket); "
                f"`sg3archive compress SRC {url}` creates an archive") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME or not isinstance(doc.get("settings"), dict):
            raise ArchiveFormatError(f"{path} is not an sg3archive archive file")
        check_format_version(doc, path)
        if CODEC_KEY in doc:
            try:
                check_codec_folder(doc[CODEC_KEY])
            except ValueError as exc:
                raise ArchiveFormatError(f"{path} is damaged: {exc}") from None
        return doc

    # -- paths -----------------------------------------------------------------------------------
    def shard_path(self, name: str) -> str:
        """The path on ``fs`` of a shard file name; UnsafeArchiveFileError for a name that is not
        a plain file name (a separator, ``..``): no name leads out of ``shards/``."""
        if not is_plain_name(name):
            raise UnsafeArchiveFileError(f"shard name {name!r} is not a plain file name inside {SHARDS_DIR}/")
        return f"{self.root}/{SHARDS_DIR}/{name}"

    @property
    def damage(self) -> list[str]:
        """One line per newer manifest generation the last manifest read skipped as damaged
        (what, which generation is used instead, what to do); empty when there was none."""
        if self.log.skipped is None:
            self.manifest()
        return [s.message() for s in self.log.skipped or [] if not s.pending]

    @property
    def pending(self) -> list[str]:
        """Like :attr:`damage`, for a newest generation that ends early and is moments old: most
        likely a commit still being written, not damage."""
        if self.log.skipped is None:
            self.manifest()
        return [s.message() for s in self.log.skipped or [] if s.pending]

    @property
    def codec_folder(self) -> str:
        """The codec's folder relative to the root: the one archive.json names (``codec/<sha256>``),
        or ``codec`` for archives written before codecs were content-addressed."""
        return str(self.archive_doc.get(CODEC_KEY, CODEC_DIR))

    @property
    def codec_url(self) -> str:
        """Where the codec model lives (pass to LatentCodec.load with the same storage options)."""
        return self.fs.unstrip_protocol(f"{self.root}/{self.codec_folder}")

    def plans_folder(self, run_id: str) -> str:
        """The path on ``fs`` of compress run ``run_id``'s plan folder ``_plans/<run>``, created and
        made the archive's own (no link out) before a plan is written in it."""
        return own_folder(self.fs, self.root, plans_folder(run_id), self.url)

    def remove_plans(self, run_id: str) -> None:
        """Remove run ``run_id``'s plan folder (the run completed), and ``_plans`` itself when no
        other run's plans are left in it. Never follows a link out of the archive."""
        folder = f"{self.root}/{plans_folder(run_id)}"
        top = f"{self.root}/{PLANS_DIR}"
        if backend_of(self.fs) != "local":
            self.fs.invalidate_cache(top)
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
            return
        if os.path.islink(top) or os.path.islink(folder) or not os.path.isdir(folder):
            return
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rmdir(top)
        except OSError:
            pass  # other runs' plans (or a run going on now) remain

    def audit_folder(self, create: bool = True) -> str:
        """The path on ``fs`` of the audit history folder ``_audit``; with ``create`` it is created
        and made the archive's own (no link out) for a record to be written in it."""
        if create:
            return own_folder(self.fs, self.root, AUDIT_DIR, self.url)
        return f"{self.root}/{AUDIT_DIR}"

    def _forget_listings(self) -> None:
        """Drop cached listings of shards/: s3fs answers "no such file" from a stale one."""
        self.fs.invalidate_cache(f"{self.root}/{SHARDS_DIR}")

    # -- writing ---------------------------------------------------------------------------------
    def write_shard(self, table: pa.Table, kind: str, metadata: dict[str, Any] | None = None,
                    name: str | None = None) -> ShardRecord:
        """Write ``table`` as a new immutable shard; invisible to readers until :meth:`commit`.

        Args:
            table: rows of ``kind``'s schema (column order free; required columns without nulls).
            kind: "images" or "failures".
            metadata: extra JSON for this shard's metadata document, on top of the archive settings.
            name: the shard's file name (:func:`check_shard_name`: ``<kind>-<name>.parquet``);
                default ``<kind>-<uuid4hex>.parquet``. A writer that can be retried names its
                shards after its unit of work, so that a retry finds what the first try wrote.

        Returns:
            The record to pass to :meth:`commit` (name, sha256, rows, bytes).

        Raises:
            ShardExistsError: a file of that name is in ``shards/`` already; it is never replaced.
        """
        name = check_shard_name(name, kind) if name is not None else f"{kind}-{uuid.uuid4().hex}.parquet"
        path = self.shard_path(name)
        table = conform_table(table, kind)
        doc = {**self.settings, **(metadata or {})}
        table = table.replace_schema_metadata(table_metadata(doc, kind))
        sink = io.BytesIO()
        pq.write_table(
            table, sink,
            row_group_size=ROW_GROUP_ROWS,
            compression="zstd",
            use_dictionary=[c for c in DICTIONARY_COLUMNS if c in table.column_names],
            write_statistics=[c for c in table.column_names if c not in NO_STATISTICS_COLUMNS],
        )
        data = sink.getvalue()
        self._create_shard(name, path, data)
        return ShardRecord(name=name, kind=kind, sha256=hashlib.sha256(data).hexdigest(),
                           rows=table.num_rows, bytes=len(data))

    def _create_shard(self, name: str, path: str, data: bytes) -> None:
        """Write a shard file whole or not at all, never over an existing file.

        Local disk: :func:`~sg3archive.store.manifest.create_exclusive` (a TEMP_PREFIX sibling,
        fsynced, hard-linked to the name: fails if the name exists), in a ``shards/`` that is the
        archive's own (no link out). Object stores: the name is checked first, then one PUT (with
        ``If-None-Match`` where the store is S3); two writers of one name at the same moment are
        not excluded there, which a retried task never is.
        """
        backend = backend_of(self.fs)
        if backend == "local":
            own_folder(self.fs, self.root, SHARDS_DIR, self.url)  # never write through a link out
            created = create_exclusive(self.fs, path, data)
        else:
            self.fs.invalidate_cache(path)
            created = not self.fs.exists(path)
            if created and backend == "s3":
                try:
                    self.fs.pipe_file(path, data, mode="create")
                except FileExistsError:
                    created = False
            elif created:
                self.fs.pipe_file(path, data)
        if not created:
            raise ShardExistsError(f"shard {name} already exists in {self.url}/{SHARDS_DIR}; it is never "
                                   "replaced: commit it, or delete it if no writer uses it, and write again")

    def written_shard(self, name: str, kind: str) -> ShardRecord | None:
        """The record of shard file ``name`` (``kind``) as written, committed or not, rebuilt from
        the file: its size, sha256, and rows from its checked footer; ``None`` when there is no such
        file. What a retried writer commits for a shard its first try wrote.

        Raises:
            ShardRefusedError, UnsafeArchiveFileError: the file is not a sound ``kind`` shard (not
                a regular file of the archive, not Parquet, a footer or schema the store refuses,
                its metadata of another kind).
        """
        path = self.shard_path(check_shard_name(name, kind))
        try:
            size = file_size(self.fs, path, self.root, f"shard {name}")
        except FileNotFoundError:
            return None
        footer = read_shard_footer(self.fs, path, size, name)
        check_shard_schema(footer.metadata, kind, name)
        check_shard_values(self.fs, path, footer, name)
        try:
            doc = read_metadata(footer.metadata.schema.to_arrow_schema())
        except (pa.ArrowException, ArchiveFormatError) as exc:
            raise ShardRefusedError(name, f"its metadata is unreadable ({exc})", self.url, unreadable=True) from None
        if doc.get("kind") != kind:
            raise ShardRefusedError(name, f"its metadata says kind {doc.get('kind')!r}, not {kind!r}", self.url)
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        return ShardRecord(name=name, kind=kind, sha256=digest.hexdigest(), rows=footer.rows, bytes=size)

    def commit(self, records: list[ShardRecord]) -> int:
        """Make written shards visible in one new manifest generation; returns its number.

        Each shard must exist with its recorded size. Concurrent commits are retried until they
        land (CommitConflictError after too many lost races); a commit repeated after it landed
        writes nothing and returns the generation already listing the shards.
        """
        records = list(records)
        self._forget_listings()
        for record in records:
            if record.kind not in KINDS:
                raise ValueError(f"shard {record.name} has unknown kind {record.kind!r}")
        paths = [self.shard_path(r.name) for r in records]
        try:
            sizes = self.fs.sizes(paths)  # concurrent on object stores
        except FileNotFoundError:
            missing = [p for p in paths if not self.fs.exists(p)]
            raise FileNotFoundError(f"cannot commit: shard file(s) {', '.join(missing)} do not exist") from None
        for record, size in zip(records, sizes):
            if size != record.bytes:
                raise ValueError(f"cannot commit shard {record.name}: it has {size} bytes, its record says {record.bytes}")
        if not records:
            return self.manifest().generation
        return self.log.commit(records).generation

    # -- reading ---------------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        """The latest readable manifest generation (generation 0, no shards, for a new archive)."""
        return self.log.latest()

    def shards(self, kind: str | None = None) -> list[ShardRecord]:
        """Committed shards, all or of one kind, in commit order."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown table kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self.manifest().shards_of(kind)

    def check_shard(self, record: ShardRecord) -> ShardFooter:
        """Check a committed shard before it is read, and return its checked footer.

        The file must be a regular file inside ``shards/`` (no symlink out of the archive) with the
        size its record gives, and its Parquet footer must declare the record's rows and sizes
        plausible for the file (:func:`sg3archive.store.bounded.check_footer`); the columns the
        format requires must be required and null-free (:func:`~sg3archive.store.bounded.check_shard_schema`),
        and its string/binary columns must not expand past the shard caps when read, measured on
        their dictionaries without expanding them (:func:`~sg3archive.store.bounded.check_shard_values`).
        Checked once per shard and store (shards are immutable).

        Raises:
            FileNotFoundError: the shard file is missing.
            ShardRefusedError, UnsafeArchiveFileError: refused (the message names the shard).
        """
        with self._footers_lock:
            known = self._footers.get(record.name)
        if known is not None:
            return known
        path = self.shard_path(record.name)
        try:
            size = file_size(self.fs, path, self.root, f"shard {record.name}")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"shard {record.name} of {self.url} is missing ({path}); `sg3archive audit {self.url}` "
                "lists every damaged shard") from None
        if size != record.bytes:
            raise ShardRefusedError(record.name, f"it has {size} bytes, the manifest says {record.bytes}", self.url)
        try:
            footer = read_shard_footer(self.fs, path, size, record.name)
            if footer.rows != record.rows:
                raise ShardRefusedError(record.name, f"its footer declares {footer.rows} rows, the manifest says "
                                        f"{record.rows}")
            check_shard_schema(footer.metadata, record.kind, record.name)
            check_shard_values(self.fs, path, footer, record.name)
        except ShardRefusedError as exc:
            raise ShardRefusedError(record.name, exc.why, self.url, exc.unreadable) from None
        with self._footers_lock:
            self._footers[record.name] = footer
        return footer

    def footers(self, kind: str | None = None) -> list[tuple[ShardRecord, ShardFooter]]:
        """Every committed shard (of ``kind``) with its checked footer, in commit order: row
        counts and column sizes without reading any row."""
        return [(record, self.check_shard(record)) for record in self.shards(kind)]

    def _dataset(self, kind: str, shard_names: list[str] | None = None,
                 manifest: Manifest | None = None) -> ds.Dataset:
        schema = schema_for(kind)
        committed = (manifest or self.manifest()).shards_of(kind)
        if shard_names is not None:
            by_name = {s.name: s for s in committed}
            unknown = [n for n in shard_names if n not in by_name]
            if unknown:
                raise KeyError(f"not committed {kind} shards of {self.url}: {unknown}")
            committed = [by_name[n] for n in shard_names]
        for record in committed:
            self.check_shard(record)
        paths = [self.shard_path(s.name) for s in committed]
        self._forget_listings()
        # With the schema given, no file is opened just to discover it; a shard of an older format
        # version that lacks a newer column reads it as nulls.
        return ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)

    def read_table(self, kind: str, columns: list[str] | None = None, shard_names: list[str] | None = None,
                   filter: ds.Expression | None = None) -> pa.Table:
        """Committed rows of ``kind`` as one table.

        Args:
            columns: the columns to read (all if None); only these are fetched.
            shard_names: read only these committed shards (names from :meth:`shards`).
            filter: a pyarrow.dataset expression, e.g. ``pc.field("psnr") < 20``.
        """
        dataset = self._dataset(kind, shard_names)
        table = dataset.to_table(columns=columns, filter=filter)
        return table.replace_schema_metadata(None)

    def iter_batches(self, kind: str, columns: list[str] | None = None, batch_size: int = BATCH_ROWS,
                     shard_names: list[str] | None = None, filter: ds.Expression | None = None) -> Iterator[pa.RecordBatch]:
        """Stream committed rows of ``kind`` in record batches of at most ``batch_size`` rows.

        Memory stays bounded by a few batches and a couple of open shards, whatever the archive size.
        """
        dataset = self._dataset(kind, shard_names)
        yield from dataset.to_batches(columns=columns, filter=filter, batch_size=batch_size,
                                      batch_readahead=4, fragment_readahead=2)

    def committed_keys(self) -> set[tuple[str, str | None, str]]:
        """(source_uri, source_sha256, settings_key) of every committed image and failure row.

        A re-run skips a source whose key is here. Only these three columns are read. A failure
        recorded before the source could be hashed has source_sha256 None.
        """
        return set().union(*self.committed_keys_by_kind().values())

    def committed_keys_by_kind(self) -> dict[str, set[tuple[str, str | None, str]]]:
        """:meth:`committed_keys`, kept apart by table kind (``images``, ``failures``)."""
        return self._keys_by_kind(KEY_COLUMNS, lambda t: set(zip(*(t.column(c).to_pylist() for c in KEY_COLUMNS))))

    def committed_exact_keys(self) -> dict[str, set[ExactKey]]:
        """``(exact source_uri, source_sha256, settings_key)`` of every committed row, by table
        kind, read in one pass (one manifest, only :data:`EXACT_KEY_COLUMNS`): what a compress run
        plans with. Names that are not UTF-8 compare exactly (``format.exact_keys``)."""
        return self._keys_by_kind(EXACT_KEY_COLUMNS, exact_keys)

    def _keys_by_kind(self, columns: Sequence[str], keys_of: Callable[[pa.Table], set[_K]]) -> dict[str, set[_K]]:
        """``keys_of`` the ``columns`` of every committed row, by table kind (one manifest read)."""
        manifest = self.manifest()
        keys: dict[str, set[_K]] = {kind: set() for kind in KINDS}
        for kind in KINDS:
            if manifest.shards_of(kind):
                keys[kind] = keys_of(self._dataset(kind, manifest=manifest).to_table(columns=list(columns)))
        return keys

    # -- checking --------------------------------------------------------------------------------
    def orphans(self) -> list[str]:
        """Names of files in ``shards/`` that no committed generation lists, sorted.

        They are shards whose commit never happened (a crashed writer, or one still about to
        commit), or temp files of interrupted local writes. Safe to delete only when no writer
        is running.
        """
        folder = f"{self.root}/{SHARDS_DIR}"
        self._forget_listings()
        try:
            paths = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        finally:
            self._forget_listings()
        listed = self.manifest().names()
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in paths)
        return sorted(n for n in names if n and n not in listed)

    def verify_shard(self, record: ShardRecord) -> list[str]:
        """Problems with a shard against its record: missing, size, sha256, row count, kind. Empty if fine."""
        path = self.shard_path(record.name)
        self.fs.invalidate_cache(path)
        try:
            size = file_size(self.fs, path, self.root, f"shard {record.name}")
        except FileNotFoundError:
            return [f"{record.name}: missing ({path})"]
        except UnsafeArchiveFileError as exc:
            return [f"{record.name}: refused: {exc}"]  # never read through a link out of the archive
        problems = []
        if size != record.bytes:
            problems.append(f"{record.name}: {size} bytes, record says {record.bytes}")
        digest = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != record.sha256:
            problems.append(f"{record.name}: sha256 {digest.hexdigest()}, record says {record.sha256}")
        try:
            footer = read_shard_footer(self.fs, path, size, record.name)
        except ShardRefusedError as exc:
            problems.append(f"{record.name}: unreadable as an sg3archive shard ({exc.why})" if exc.unreadable
                            else f"{record.name}: refused: {exc.why}")
            return problems
        except OSError as exc:
            problems.append(f"{record.name}: unreadable as an sg3archive shard ({exc})")
            return problems
        rows = footer.rows
        try:
            check_shard_schema(footer.metadata, record.kind, record.name)
            check_shard_values(self.fs, path, footer, record.name)
        except ShardRefusedError as exc:
            problems.append(f"{record.name}: unreadable as an sg3archive shard ({exc.why})" if exc.unreadable
                            else f"{record.name}: refused: {exc.why}")
            return problems
        try:
            doc = read_metadata(footer.metadata.schema.to_arrow_schema())
        except (pa.ArrowException, ArchiveFormatError) as exc:
            problems.append(f"{record.name}: unreadable as an sg3archive shard ({exc})")
            return problems
        if rows != record.rows:
            problems.append(f"{record.name}: {rows} rows, record says {record.rows}")
        if doc.get("kind") != record.kind:
            problems.append(f"{record.name}: its metadata says kind {doc.get('kind')!r}, record says {record.kind!r}")
        return problems
