"""The manifest: numbered, immutable JSON generations listing every committed shard.

A reader trusts nothing but the latest readable generation ``_manifest/<generation:010d>.json``;
a shard file becomes visible only when a generation lists it. A commit is a compare-and-swap on
the generation number: build N+1 from the latest generation N plus the new shards, and create
``_manifest/<N+1>.json`` only if nobody else has. How "only if" is made atomic depends on the
backend (see :func:`create_exclusive` and docs/FORMAT.md).

Each generation written by this version carries ``checksum``: ``"sha256:<hex>"`` of the
document's canonical JSON without that key (sorted keys, no spaces, ASCII), so any changed byte
of a generation is found when it is read. Generations without one (written before) are read as
they are. A reader never stops at an unreadable newest generation: it uses the newest readable one
(what makes a killed commit safe) and records what it skipped (:attr:`ManifestLog.skipped`), so
``inspect``, ``restore`` and the audit can say so.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from sg3archive.atomic import fsync_folder
from sg3archive.store.bounded import MANIFEST_CAP, UnsafeArchiveFileError, loads_strict, own_folder, read_bounded
from sg3archive.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KINDS,
    ArchiveFormatError,
    CommitConflictError,
    NewerFormatError,
    check_format_version,
)
from sg3archive.store.layout import (  # noqa: F401  (the layout's names, importable from here as before)
    ARCHIVE_FILE,
    CODEC_DIR,
    MANIFEST_DIR,
    SHARDS_DIR,
    TEMP_PREFIX,
)

logger = logging.getLogger(__name__)

GENERATION_DIGITS = 10

# Attempts of the compare-and-swap before giving up, and the backoff between them (seconds).
COMMIT_ATTEMPTS = 30
BACKOFF_FIRST = 0.005
BACKOFF_MAX = 0.5
# How often (and how long apart) a committer re-reads an unreadable newest generation before it
# builds on an older one: on a backend without atomic create it may still be being written.
UNREADABLE_RETRIES = 3
UNREADABLE_WAIT = 0.2
# A newest generation that ends early (cut-off JSON or empty) and was modified this recently may
# still be being written (backends without an atomic create); older, or damaged otherwise, it is
# damage.
PENDING_SECONDS = 120.0
CHECKSUM_KEY = "checksum"

# memory:// lives in this process only, so a process-wide lock makes its create exclusive.
_MEMORY_LOCK = threading.Lock()


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds (the archive's timestamp text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class ShardRecord:
    """One shard file as a manifest lists it.

    Attributes:
        name: file name inside ``shards/`` (``<kind>-<name>.parquet``: compress names it after its run and plan, other writers use a uuid4).
        kind: the table kind, "images" or "failures".
        sha256: hex digest of the whole file.
        rows: number of rows.
        bytes: file size in bytes.
        committed_at: ISO 8601 UTC time of the commit that listed it; None until committed.
    """

    name: str
    kind: str
    sha256: str
    rows: int
    bytes: int
    committed_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> ShardRecord:
        """A record from its manifest JSON, every field checked for its type (ArchiveFormatError):
        a generation is untrusted input, and a wrong value must read as a damaged generation."""
        if not isinstance(doc, dict):
            raise ArchiveFormatError(f"a shard record is a {type(doc).__name__}, not an object")
        record = cls(name=_text(doc, "name"), kind=_text(doc, "kind"), sha256=_text(doc, "sha256"),
                     rows=_count(doc, "rows"), bytes=_count(doc, "bytes"),
                     committed_at=_text(doc, "committed_at", optional=True))
        if record.kind not in KINDS:
            raise ArchiveFormatError(f"shard {record.name!r} has unknown kind {record.kind!r}")
        if not is_plain_name(record.name) or record.name.startswith("."):
            raise ArchiveFormatError(f"shard name {record.name!r} is not a plain file name inside shards/")
        return record


def _text(doc: dict[str, Any], key: str, optional: bool = False) -> Any:
    """``doc[key]`` if it is a string (or, when ``optional``, missing or null); ArchiveFormatError
    otherwise."""
    value = doc.get(key) if optional else doc[key]
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ArchiveFormatError(f"{key!r} is {value!r}, not a string")
    return value


def _count(doc: dict[str, Any], key: str, optional: bool = False) -> Any:
    """``doc[key]`` if it is a non-negative int (not a bool, not a float; or, when ``optional``,
    missing or null); ArchiveFormatError otherwise."""
    value = doc.get(key) if optional else doc[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArchiveFormatError(f"{key!r} is {value!r}, not a count (a non-negative integer)")
    return value


def is_plain_name(name: str) -> bool:
    """Whether ``name`` names a file directly inside a folder: no separator, no ``..``, no NUL."""
    return (bool(name) and len(name) <= 255 and name not in (".", "..")
            and not any(c in name for c in ("/", "\\", "\x00")))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One generation of the manifest: the full list of committed shards (not a delta).

    Generation 0 is the empty archive and has no file; the first commit writes generation 1.
    ``parent`` is the generation this one was built on.
    """

    generation: int
    parent: int | None
    committed_at: str | None
    shards: tuple[ShardRecord, ...]
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def shards_of(self, kind: str | None = None) -> list[ShardRecord]:
        """The committed shards, all or of one kind, in commit order."""
        return [s for s in self.shards if kind is None or s.kind == kind]

    def names(self) -> set[str]:
        return {s.name for s in self.shards}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "generation": self.generation,
            "parent": self.parent,
            "committed_at": self.committed_at,
            "shards": [s.to_json() for s in self.shards],
        }

    @classmethod
    def from_json(cls, doc: Any, what: str = "manifest") -> Manifest:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise ArchiveFormatError(f"{what} is not an sg3archive manifest")
        check_format_version(doc, what)
        try:
            if not isinstance(doc["shards"], list):
                raise ArchiveFormatError(f"'shards' is {type(doc['shards']).__name__}, not a list")
            shards = tuple(ShardRecord.from_json(s) for s in doc["shards"])
            seen: set[str] = set()
            for record in shards:  # a commit never lists a shard twice: a repeat would be read (and counted) twice
                if record.name in seen:
                    raise ArchiveFormatError(f"it lists shard {record.name} more than once")
                seen.add(record.name)
            return cls(generation=_count(doc, "generation"), parent=_count(doc, "parent", optional=True),
                       committed_at=_text(doc, "committed_at", optional=True), shards=shards,
                       format=_text(doc, "format"), format_version=_count(doc, "format_version"))
        except NewerFormatError:
            raise
        except ArchiveFormatError as exc:
            raise ArchiveFormatError(f"{what} is malformed: {exc}") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ArchiveFormatError(f"{what} is malformed: {exc!r}") from None


EMPTY_MANIFEST = Manifest(generation=0, parent=None, committed_at=None, shards=())


def _canonical(doc: dict[str, Any]) -> bytes:
    """The bytes a generation's checksum is taken over: ``doc`` without its checksum, canonical JSON."""
    body = {k: v for k, v in doc.items() if k != CHECKSUM_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encode_manifest(manifest: Manifest) -> bytes:
    """The file bytes of a generation: its JSON with the ``checksum`` of its content."""
    doc = manifest.to_json()
    doc[CHECKSUM_KEY] = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    return json.dumps(doc, indent=1).encode("utf-8")


def checksum_problem(doc: dict[str, Any]) -> str | None:
    """Why a generation's checksum does not match its content, or None (also when it has none)."""
    stated = doc.get(CHECKSUM_KEY)
    if stated is None:
        return None
    found = "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    if stated != found:
        logger.debug("manifest checksum %r, content %s", stated, found)
        return "checksum mismatch"
    return None


class GenerationUnreadableError(ArchiveFormatError):
    """One manifest generation cannot be used; ``reason`` says why in a few words, ``cut_off``
    whether its file merely ends early (empty or cut-off JSON: possibly still being written)."""

    def __init__(self, message: str, reason: str, cut_off: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.cut_off = cut_off


@dataclasses.dataclass(frozen=True)
class SkippedGeneration:
    """A newer generation a reader skipped to use an older one.

    Attributes:
        generation: its number; ``file``: its path inside the archive (``_manifest/….json``).
        reason: why it was unreadable ("checksum mismatch: …", "not valid JSON (…)").
        pending: it ends early and was modified moments ago: probably a commit still being
            written, not damage.
        used: the generation read instead (0: none, the archive reads as empty).
    """

    generation: int
    file: str
    reason: str
    pending: bool
    used: int

    def message(self) -> str:
        """One line for the user: what was skipped, what is used, what that means, what to do."""
        instead = f"using generation {self.used}" if self.used else "no older generation is readable, so the archive reads as empty"
        if self.pending:
            return (f"manifest generation {self.generation} ({self.file}) is incomplete ({self.reason}); it may be a "
                    f"commit still being written — {instead} for now; rerun in a minute to see its shards")
        return (f"manifest generation {self.generation} ({self.file}) is damaged ({self.reason}) — {instead}; "
                "the shards it added are not visible; rerun the compress that wrote it")


def generation_name(generation: int) -> str:
    """The file name of a generation inside ``_manifest/``."""
    return f"{generation:0{GENERATION_DIGITS}d}.json"


def parse_generation_name(name: str) -> int | None:
    """The generation number of a ``_manifest/`` file name, or None for anything else."""
    stem, dot, ext = name.partition(".")
    if ext != "json" or len(stem) != GENERATION_DIGITS or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def backend_of(fs: fsspec.AbstractFileSystem) -> str:
    """Which exclusive-create mechanism a filesystem gets: "local", "memory", "s3" or "generic"."""
    if isinstance(fs, LocalFileSystem):
        return "local"
    if isinstance(fs, MemoryFileSystem):
        return "memory"
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "s3" in protocols or "s3a" in protocols:
        return "s3"
    return "generic"


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    The guarantee per backend:

    * local: ``data`` goes to a temp file in the same folder (fsynced), then ``os.link`` gives it
      the final name; link fails if the name exists, atomically, across threads and processes on
      one local POSIX filesystem. Readers never see a partial file under the final name.
      Where hard links are unsupported, ``O_CREAT|O_EXCL`` keeps the create exclusive but a crash
      mid-write can leave a partial file (which readers skip with a warning).
    * memory: check and write under a process-wide lock (memory:// exists in this process only).
    * s3: one PUT with ``If-None-Match: *`` (S3 conditional writes); the store answers 412 if the
      key exists. AWS S3 enforces this atomically; stores that ignore the header would overwrite,
      so the written object is read back and compared (which catches most, not all, such races).
    * generic: fsspec's ``pipe_file(mode="create")`` and a read-back; the default implementation
      checks then writes, so concurrent writers are NOT safely excluded: use one writer at a time.
    """
    backend = backend_of(fs)
    if backend == "local":
        return _create_local(path, data)
    if backend == "memory":
        with _MEMORY_LOCK:
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    fs.invalidate_cache(path)
    return fs.cat_file(path) == data


def _create_local(path: str, data: bytes) -> bool:
    folder = os.path.dirname(path)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    with open(temp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            return _create_local_excl(path, data)
    finally:
        os.unlink(temp)
    fsync_dir(folder)
    return True


def _create_local_excl(path: str, data: bytes) -> bool:
    """Exclusive create without hard links: atomic, but a crash may leave a partial file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def fsync_dir(folder: str) -> None:
    """Make a local folder's entries (a new name, a rename) durable; a no-op where unsupported
    (:func:`sg3archive.atomic.fsync_folder`)."""
    fsync_folder(folder)


class ManifestLog:
    """The generations of one archive's manifest: list, read the latest, commit the next."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.folder = f"{self.root}/{MANIFEST_DIR}"
        # What the last latest() skipped (None before the first read): newer generations that
        # were unreadable, newest first.
        self.skipped: list[SkippedGeneration] | None = None
        self._warned: set[tuple[int, str]] = set()  # each unreadable generation is logged once

    def path(self, generation: int) -> str:
        return f"{self.folder}/{generation_name(generation)}"

    def generations(self) -> list[int]:
        """Every generation number with a file, ascending (a fresh listing, never a cached one)."""
        self.fs.invalidate_cache(self.folder)
        try:
            names = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return []
        finally:
            self.fs.invalidate_cache(self.folder)  # a stale listing would hide later generations
        numbers = (parse_generation_name(n.rstrip("/").rsplit("/", 1)[-1]) for n in names)
        return sorted(n for n in numbers if n is not None)

    def read(self, generation: int) -> Manifest:
        """One generation, read as untrusted input: a regular file inside the archive of at most
        :data:`~sg3archive.store.bounded.MANIFEST_CAP` bytes, whose checksum (when it has one)
        matches. GenerationUnreadableError (an ArchiveFormatError) if it is partial, damaged or
        not a manifest; NewerFormatError if a newer sg3archive wrote it."""
        path = self.path(generation)
        what = f"manifest generation {path}"

        def unreadable(reason: str, cut_off: bool = False) -> GenerationUnreadableError:
            return GenerationUnreadableError(f"{what} is unreadable: {reason}", reason, cut_off)

        try:
            raw = read_bounded(self.fs, path, MANIFEST_CAP, f"manifest generation {generation}", self.root)
        except UnsafeArchiveFileError as exc:
            raise unreadable(str(exc)) from None
        try:
            doc = loads_strict(raw)  # NaN/Infinity refused: no manifest field is one
        except (ValueError, RecursionError) as exc:
            cut_off = not raw.rstrip().endswith(b"}")  # a whole generation ends with its closing brace
            raise unreadable("empty" if not raw.strip() else f"not valid JSON ({exc})", cut_off) from None
        if isinstance(doc, dict) and doc.get("format") == FORMAT_NAME:
            check_format_version(doc, what)  # NewerFormatError first: never skip an upgraded archive
            problem = checksum_problem(doc)
            if problem:
                raise unreadable(problem)
        try:
            manifest = Manifest.from_json(doc, what=what)
        except NewerFormatError:
            raise
        except ArchiveFormatError as exc:
            raise unreadable(str(exc).removeprefix(f"{what} ")) from None
        if manifest.generation != generation:
            raise unreadable(f"it says it is generation {manifest.generation}")
        return manifest

    def _age(self, path: str) -> float | None:
        """Seconds since ``path`` was last modified, or None where the store does not say."""
        try:
            info = self.fs.info(path)
        except (OSError, ValueError):
            return None
        mtime = info.get("mtime", info.get("LastModified", info.get("last_modified")))
        if isinstance(mtime, datetime):
            mtime = mtime.timestamp()
        if not isinstance(mtime, (int, float)):
            return None
        return time.time() - float(mtime)

    def _skipped(self, generation: int, exc: Exception, newest: bool) -> SkippedGeneration:
        reason = getattr(exc, "reason", None) or (
            "file missing" if isinstance(exc, FileNotFoundError) else " ".join(str(exc).split()))
        cut_off = bool(getattr(exc, "cut_off", False))
        age = self._age(self.path(generation)) if cut_off and newest else None
        pending = age is not None and age < PENDING_SECONDS
        return SkippedGeneration(generation=generation, file=f"{MANIFEST_DIR}/{generation_name(generation)}",
                                 reason=reason, pending=pending, used=0)

    def latest(self) -> Manifest:
        """The highest-numbered readable generation (unreadable ones are skipped with a warning).

        A generation of a newer format version is not skipped: it raises NewerFormatError.
        """
        return self._latest(self.generations(), patient=False)[0]

    def _latest(self, numbers: list[int], patient: bool) -> tuple[Manifest, int]:
        """(newest readable generation, highest generation number present); what it skipped is
        left in :attr:`skipped`."""
        highest = numbers[-1] if numbers else 0
        skipped: list[SkippedGeneration] = []
        found = EMPTY_MANIFEST
        for i, generation in enumerate(reversed(numbers)):
            tries = UNREADABLE_RETRIES if patient and i == 0 else 1
            manifest = None
            for attempt in range(tries):
                try:
                    manifest = self.read(generation)
                    break
                except NewerFormatError:
                    raise  # never fall back to an older generation of an archive upgraded since
                except (ArchiveFormatError, FileNotFoundError) as exc:
                    if attempt + 1 < tries:
                        time.sleep(UNREADABLE_WAIT)
                        continue
                    skip = self._skipped(generation, exc, newest=i == 0)
                    if (generation, skip.reason) not in self._warned:
                        self._warned.add((generation, skip.reason))
                        logger.warning("ignoring unreadable manifest generation %d: %s", generation, exc)
                    skipped.append(skip)
            if manifest is not None:
                found = manifest
                break
        self.skipped = [dataclasses.replace(s, used=found.generation) for s in skipped]
        return found, highest

    def commit(self, records: Iterable[ShardRecord], attempts: int = COMMIT_ATTEMPTS) -> Manifest:
        """Append ``records`` in a new generation; retried on conflict, so concurrent commits all land.

        Records already listed (a retried commit whose first try did land) are not listed twice; if
        every record is already listed, the latest generation is returned and nothing is written.
        """
        records = list(records)
        names = [r.name for r in records]
        if len(set(names)) != len(names):
            raise ValueError(f"the same shard is in one commit twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        if backend_of(self.fs) == "local":
            own_folder(self.fs, self.root, MANIFEST_DIR)  # a generation is never written through a link
        delay = BACKOFF_FIRST
        for _attempt in range(attempts):
            base, highest = self._latest(self.generations(), patient=True)
            listed = base.names()
            new = [r for r in records if r.name not in listed]
            if not new:
                return base
            now = utc_now()
            stamped = tuple(dataclasses.replace(r, committed_at=now) for r in new)
            manifest = Manifest(generation=highest + 1, parent=base.generation, committed_at=now,
                                shards=base.shards + stamped)
            data = encode_manifest(manifest)
            if create_exclusive(self.fs, self.path(manifest.generation), data):
                logger.debug("committed manifest generation %d (+%d shards)", manifest.generation, len(new))
                return manifest
            logger.debug("manifest generation %d taken by another writer; retrying", manifest.generation)
            time.sleep(random.uniform(0, delay))
            delay = min(BACKOFF_MAX, delay * 2)
        raise CommitConflictError(
            f"could not commit {len(records)} shard(s) to {self.root}: other writers took the next manifest "
            f"generation {attempts} times in a row; the shards are written and still valid, commit them again")
