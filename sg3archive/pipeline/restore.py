"""Restore images from an archive: plan (select rows and name their outputs from the id and name
columns only), then decode payloads, synthesize in batches and write files under the destination
(never outside it), skipping outputs that already exist.

Names: a row restores to ``DEST/<source_name>`` with the suffix set to the output format, where
``source_name`` is the source's path relative to the compress job's SRC (``more/gray.png`` for
``examples/images/more/gray.png`` compressed from ``examples/images``). Rows of archives written
before that column existed use their URI's path without the scheme (``data/photos/a.png``). Every
root or anchor is removed (leading ``/``, ``//``, ``\\\\``, ``\\\\?\\``, a drive letter that is a whole
first part, ``C:/``); every other character is kept (``a::b.png``); a name with ``.``/``..`` parts
is refused. When two rows would get the same file (``a.jpg`` and ``a.png``, or
two sources compressed into one archive), the row first in archive order keeps the name and later
ones get ``.<id[:8]>`` before the suffix (a folder that would clash with an earlier row's file gets
it after its name); names compare case-insensitively, as some filesystems do. The rule depends on
the archive only, not on the selection, so partial restores and full ones agree.

Archives are untrusted input. Under a local DEST nothing is written through a symbolic link inside
DEST, each target's real path must lie under DEST's real path, and no target may be a file the
archive records as a source (not even with ``overwrite``): see ``sg3archive.store.safe_write``.
A row that cannot be restored (unsafe name, a required value missing, payload that fails its
sha256 or does not decode, damaged fit record) is recorded in the summary's ``bad`` list and
skipped, and so is a whole shard the store refuses to read (one entry); the others restore.
A full, read-only or unwritable DEST stops the restore with one ``DestinationWriteError`` line.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
from fsspec.implementations.local import LocalFileSystem
from tqdm import tqdm

from sg3archive.errors import FingerprintMismatchError, Sg3ArchiveError
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.models import Models, fingerprint_mismatches, load_codec, load_models
from sg3archive.pixels import to_uint8
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import ArchiveFormatError, uri_path
from sg3archive.store.inputs import FitInfo, local_path, to_restored_image, unfit
from sg3archive.store.safe_write import (
    DestinationWriteError,
    LocalDestination,
    UnsafeTargetError,
    destination_error,
    is_within,
    resolved_target,
)
from sg3archive.text import printable

__all__ = ["BadRow", "RestoreIncompleteError", "RestorePlan", "RestoreSummary", "output_name", "plan_restore",
           "printable", "restore"]

SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
NAME_COLUMNS = ["id", "source_uri", "source_name", "source_uri_bytes"]  # exact names: format.exact_name
COLUMNS = [*NAME_COLUMNS, "payload", "payload_sha256", "fit", "mode"]
_DRIVE = re.compile(r"[A-Za-z]:")  # a whole first path part: C:/x.png, C:\x.png
_DRIVE_RELATIVE = re.compile(r"[A-Za-z]:(?=.)", re.DOTALL)  # Windows only: C:x.png
# What a shard the store refuses to read raises (a tampered footer, a null in a required column,
# a column of the wrong type, a shard file that is missing): that shard is reported, the others restore.
SHARD_REFUSED = (ArchiveFormatError, FileNotFoundError, pa.ArrowInvalid, pa.ArrowTypeError,
                 pa.ArrowNotImplementedError)


class RestoreIncompleteError(Sg3ArchiveError):
    """Some selected rows could not be restored (each is listed in the summary); the rest were."""


class RowNotWritableError(Sg3ArchiveError):
    """One row's image cannot be made or written here (too large for the output format or this
    machine's memory, a name the destination cannot hold): not damage in the archive."""


# Output formats' largest side in pixels (libwebp: 16383; libjpeg: 65500, though JPEG itself names 65535).
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500}


@dataclass
class BadRow:
    """A selected row that was skipped, and why."""

    id: str
    name: str
    reason: str
    unwritable: bool = False  # the archive is fine; the image cannot be made or written here

    def text(self) -> str:
        """One printable line (control characters and names from non-UTF-8 file names shown with
        escapes); a refused shard's entry (no id, no name) is its reason alone."""
        if not self.id and not self.name:
            return printable(self.reason)
        return printable(f"{self.id}  {self.name}: {self.reason}")

    @property
    def is_shard(self) -> bool:
        """Whether this entry stands for a whole refused shard rather than one row."""
        return not self.id and not self.name


def incomplete_text(bad: list[BadRow]) -> str:
    """The start of the error a restore with bad entries ends with: how many selected images
    could not be restored, and how many shards were refused."""
    shards = sum(1 for b in bad if b.is_shard)
    rows = f"{len(bad) - shards} of the selected images could not be restored"
    if not shards:
        return rows
    refused = f"{shards} shard{'s' if shards > 1 else ''} of the archive {'were' if shards > 1 else 'was'} refused"
    return f"{rows} and {refused}" if len(bad) > shards else refused


def incomplete_cause(bad: list[BadRow]) -> str:
    """Why a restore with bad entries is incomplete, for its final error line: rows that could
    not be written here (too large, a name too long) counted apart from archive damage, which
    alone points to ``sg3archive audit``."""
    unwritable = sum(1 for b in bad if b.unwritable)
    parts = []
    if unwritable:
        parts.append(f"{unwritable} row{'s' if unwritable > 1 else ''} could not be written (see above)")
    if len(bad) > unwritable:
        parts.append("the archive has damaged rows or shards, or unsafe names")
    return " and ".join(parts)


def not_restored_text(bad: list[BadRow]) -> str:
    """How many rows (and refused shards) could not be restored, for a summary line ("" if none)."""
    shards = sum(1 for b in bad if b.is_shard)
    text = f", {len(bad) - shards} could not be restored" if len(bad) > shards else ""
    if shards:
        text += f", {shards} shard{'s' if shards > 1 else ''} refused (not restored)"
    return text


@dataclass
class RestoreSummary:
    """What a restore did. ``written`` counts files actually written; ``bad`` the rows skipped
    as damaged or unsafe; ``warnings`` the archive's damage notes (a skipped manifest generation)."""

    destination: str
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        text = f"{self.written} images restored to {self.destination}, {self.skipped} already there"
        text += not_restored_text(self.bad)
        if self.written and self.seconds > 0:
            text += f"; {self.written / self.seconds:.2f} images/s"
        return printable(text)

    def bad_text(self) -> str:
        """The skipped rows, one per line: id, name and reason."""
        return "\n".join(f"not restored: {row.text()}" for row in self.bad)


@dataclass
class RestorePlan:
    """What a restore writes, found from the id and name columns only.

    Attributes:
        total: selected rows.
        shards: images shard name → selected rows in it, in commit order (shards without any are left out).
        renamed: shard name → row index in the shard → output name, for rows whose name was taken
            by an earlier row (every other selected row writes ``output_name(row_name(...))``).
        refused: shard name → row index in the shard → why no output name can be made for it
            (selected rows only; restore reports them as bad rows).
        refused_shards: shard name → why the store refused to read it (shards that may hold
            selected rows; none of their rows is written, restore reports one bad entry each).
    """

    total: int = 0
    shards: dict[str, int] = field(default_factory=dict)
    renamed: dict[str, dict[int, str]] = field(default_factory=dict)
    refused: dict[str, dict[int, str]] = field(default_factory=dict)
    refused_shards: dict[str, str] = field(default_factory=dict)

    def for_shard(self, shard: str) -> RestorePlan:
        """The part of the plan in one shard (a flow task's share)."""
        count = self.shards.get(shard, 0)
        return RestorePlan(total=count, shards={shard: count} if count else {},
                           renamed={shard: self.renamed[shard]} if shard in self.renamed else {},
                           refused={shard: self.refused[shard]} if shard in self.refused else {},
                           refused_shards={shard: self.refused_shards[shard]} if shard in self.refused_shards else {})

    def refused_shard_rows(self) -> list[BadRow]:
        """One bad entry per refused shard."""
        return [shard_refused(name, why) for name, why in self.refused_shards.items()]


def shard_refused(shard: str, why: str) -> BadRow:
    """The bad entry for a shard the store refused to read."""
    return BadRow("", "", f"shard {shard} refused: {why}")


def _refusal(exc: BaseException) -> str:
    """Why a shard was refused, in a few words (a ``ShardRefusedError``'s own, or the message)."""
    why = getattr(exc, "why", None)
    return why if isinstance(why, str) else str(exc)


def output_name(name: str, fmt: str) -> str:
    """A relative output path for a row name (or, for a URI, its path without the scheme) with the
    suffix set to the format: backslashes read as slashes; every root or anchor dropped (leading
    ``/``, ``//``, a ``\\\\?\\`` or ``\\\\.\\`` device prefix, a drive letter that is a whole first part,
    ``C:/x.png``, and on Windows a drive-relative ``C:x.png``'s ``C:``) and empty parts too; every
    other character kept (``a::b.png``, POSIX ``C:x.png``, a folder ``x:`` after the first part).
    Refuses names that would leave the destination (``.``/``..`` parts) or hold a NUL."""
    text = uri_path(name) if "://" in name else name
    text = text.replace("\\", "/")
    pieces = [p for p in text.split("/") if p]
    if text.startswith("//") and pieces and pieces[0] in ("?", "."):  # \\?\C:\x, \\.\C:\x
        pieces = pieces[1:]
    if len(pieces) > 1 and _DRIVE.fullmatch(pieces[0]):  # C:/x.png (a separator follows the drive)
        pieces = pieces[1:]
    elif pieces and os.name == "nt" and _DRIVE_RELATIVE.match(pieces[0]):  # C:x.png: relative to C:'s folder
        pieces[0] = pieces[0][2:]
    if not pieces or any(p in (".", "..") or "\x00" in p for p in pieces):
        raise Sg3ArchiveError(f"cannot derive a safe output name from {name!r}: it would leave the destination")
    try:
        return str(PurePosixPath(*pieces).with_suffix(SUFFIX[fmt]))
    except ValueError as exc:
        raise Sg3ArchiveError(f"cannot derive an output name from {name!r}: {exc}") from None


class _Names:
    """Output names taken so far (case-insensitively): files, and the folders they sit in."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()
        # (folder, stem, id, suffix) → the next counter to try for "<stem>.<id>-<n><suffix>": each
        # counter below it was taken when passed, and names are never given back, so the first
        # free one is the same as when searching from 2, and each claim is O(1) amortised however
        # many copies of one row an archive holds.
        self._next: dict[tuple[str, str, str, str], int] = {}

    def claim(self, name: str, rid: str) -> str:
        """``name``, or when an earlier row took it (or a folder of that name is needed), ``name``
        with the id before the suffix (its first 8 hex, then the whole id, then the whole id and
        ``-2``, ``-3``, ...); a folder on the way that is an earlier row's file gets the id after
        its name."""
        folder, base = posixpath.split(name)
        folder = self._free_folder(folder, rid)
        stem, suffix = posixpath.splitext(base)
        for candidate in (base, f"{stem}.{rid[:8]}{suffix}", f"{stem}.{rid}{suffix}"):
            full = self._take(posixpath.join(folder, candidate), folder)
            if full is not None:
                return full
        series = (folder, stem, rid, suffix)
        n = self._next.get(series, 2)
        while True:  # the same source archived more than once
            full = self._take(posixpath.join(folder, f"{stem}.{rid}-{n}{suffix}"), folder)
            n += 1
            if full is not None:
                self._next[series] = n
                return full

    def _take(self, full: str, folder: str) -> str | None:
        """``full`` claimed as a file (its folders as folders), or None when it is taken."""
        key = full.casefold()
        if key in self.files or key in self.folders:
            return None
        self.files.add(key)
        self._add_folders(folder)
        return full

    def _free_folder(self, folder: str, rid: str) -> str:
        parts = folder.split("/") if folder else []
        for i in range(len(parts)):
            if "/".join(parts[: i + 1]).casefold() in self.files:
                tag = f"{parts[i]}.{rid[:8]}"
                while "/".join([*parts[:i], tag]).casefold() in self.files:
                    tag += "_"
                parts[i] = tag
        return "/".join(parts)

    def _add_folders(self, folder: str) -> None:
        parts = folder.split("/") if folder else []
        for i in range(len(parts)):
            self.folders.add("/".join(parts[: i + 1]).casefold())


def _uris_and_names(cols: dict[str, list[Any]]) -> Iterator[tuple[str | None, str | None]]:
    """Each row's exact source URI and name (``surrogateescape`` strs for names that are not
    UTF-8: ``format.exact_uri``/``exact_name`` read them from ``source_uri_bytes``); None for
    one that a damaged row lacks (a null where the schema requires a value)."""
    raws = cols.get("source_uri_bytes") or [None] * len(cols["source_uri"])
    names = cols.get("source_name") or [None] * len(cols["source_uri"])
    for uri, name, raw in zip(cols["source_uri"], names, raws):
        row = {"source_uri": uri, "source_name": name, "source_uri_bytes": raw}
        try:
            exact = fmt.exact_uri(row)
        except (TypeError, ValueError, AttributeError):
            exact = None
        if not isinstance(exact, str):
            yield None, name if isinstance(name, str) and name else None
            continue
        try:
            exact_name = fmt.exact_name(row)
        except (TypeError, ValueError, AttributeError):
            exact_name = None
        yield exact, exact_name if isinstance(exact_name, str) else None


def _missing(rid: Any, uri: str | None, name: str | None) -> str | None:
    """Why a row has no usable id or name (a null or a value of the wrong type where the schema
    requires a string), or None when it has both."""
    missing = [what for what, value in (("id", rid), ("source_uri", uri), ("name", name))
               if not isinstance(value, str) or not value]
    if not missing:
        return None
    return f"its {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (the archive is damaged)"


def _shown(value: Any, fallback: str) -> str:
    """A row's id or name as a bad entry shows it (``fallback`` when the row lacks it)."""
    return value if isinstance(value, str) and value else fallback


def _selector(job: RestoreJob) -> Callable[[Any, str | None, str | None], bool]:
    ids = set(job.ids or ())
    glob = job.glob
    name_glob = glob.removeprefix("./") if glob else None

    def selected(rid: Any, uri: str | None, name: str | None) -> bool:
        if _missing(rid, uri, name):  # cannot be matched: part of a whole (or whole-shard) restore only
            return not ids and not glob
        if ids and rid not in ids:
            return False
        return not glob or fnmatchcase(name, name_glob) or fnmatchcase(uri, glob)

    return selected


def _listing_hint(archive: str) -> str:
    return f"`sg3archive inspect {archive} --rows` lists ids and names"


def plan_restore(job: RestoreJob, store: ArchiveStore | None = None) -> RestorePlan:
    """Select the rows ``job`` asks for and name their outputs, reading only the id and name
    columns (of every images shard: names taken by rows outside the selection count too; memory:
    one short name per row, nothing per pixel). A selected row whose name would leave the
    destination, or that lacks its id or name, is put in ``refused``; a shard the store refuses
    to read in ``refused_shards`` (restore reports them and restores the others).

    Raises:
        Sg3ArchiveError: an unknown shard, ids not in the archive, or a selection that matches
            nothing (neither when a shard was refused: those rows may be in it).
    """
    store = store or ArchiveStore.open(job.archive, storage_options=job.storage_options)
    records = store.shards("images")
    if job.shard and job.shard not in {r.name for r in records}:
        raise Sg3ArchiveError(f"{job.shard!r} is not an images shard of {job.archive}; "
                              f"`sg3archive inspect {job.archive} --shards` lists them")
    selected = _selector(job)
    wanted, found = set(job.ids or ()), set()
    names = _Names()
    plan = RestorePlan()
    for record in records:
        index, seen = 0, set()
        try:
            for batch in store.iter_batches("images", columns=NAME_COLUMNS, shard_names=[record.name]):
                cols = batch.to_pydict()
                for rid, (uri, name) in zip(cols["id"], _uris_and_names(cols)):
                    chosen = selected(rid, uri, name) and (not job.shard or record.name == job.shard)
                    if rid in wanted:
                        seen.add(rid)
                    if chosen:
                        plan.total += 1
                        plan.shards[record.name] = plan.shards.get(record.name, 0) + 1
                    problem = _missing(rid, uri, name)
                    try:
                        if problem:
                            raise Sg3ArchiveError(problem)
                        out = output_name(name, job.format)
                    except Sg3ArchiveError as exc:
                        if chosen:  # never written, so it takes no name
                            plan.refused.setdefault(record.name, {})[index] = str(exc)
                        index += 1
                        continue
                    final = names.claim(out, rid)
                    if chosen and final != out:
                        plan.renamed.setdefault(record.name, {})[index] = final
                    index += 1
        except SHARD_REFUSED as exc:  # none of its rows is written (names its first rows took stay taken)
            if not job.shard or record.name == job.shard:
                plan.refused_shards[record.name] = _refusal(exc)
            _drop_shard(plan, record.name)
        else:
            found |= seen
    missing = sorted(wanted - found)
    if job.ids and not missing:  # every asked id was found: a refused shard holds none of the selection
        plan.refused_shards.clear()
    if plan.refused_shards:  # the ids or matches may be in a refused shard: reported there, not here
        return plan
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise Sg3ArchiveError(f"{len(missing)} of the --ids are not in {job.archive}: {shown}; "
                              f"{_listing_hint(job.archive)}")
    if not plan.total and (job.ids or job.glob or job.shard):
        what = " with ".join(s for s in (f"--glob {job.glob!r}" if job.glob else "",
                                         f"--ids ({len(wanted)})" if job.ids else "",
                                         f"--shard {job.shard}" if job.shard else "") if s)
        hint = (" (--glob matches names relative to the compressed folder, e.g. 'more/*.png', or full source URIs)"
                if job.glob else "")
        raise Sg3ArchiveError(f"{what} matches no image of {job.archive}{hint}; {_listing_hint(job.archive)}")
    return plan


def _drop_shard(plan: RestorePlan, shard: str) -> None:
    """Take a refused shard's rows out of what a plan writes (its names stay taken)."""
    plan.total -= plan.shards.pop(shard, 0)
    plan.renamed.pop(shard, None)
    plan.refused.pop(shard, None)


# -- where files go ---------------------------------------------------------------------------------
class _Sources:
    """The archive's recorded sources, as paths a target must never be: local sources by real
    path (and, when a target exists, by device and inode), remote ones by URL.

    Sources are those of every images row and of every failures row: a source that could not be
    archived (say ``a.png`` that does not decode, beside an archived ``a.jpg`` that restores to
    ``a.png``) has no copy in the archive, so it must never be written over either. A shard the
    store refuses to read is left out and named in ``warnings`` (its sources are not known).
    """

    def __init__(self, store: ArchiveStore) -> None:
        self.local: set[str] = set()
        self.remote: set[str] = set()
        self.warnings: list[str] = []
        self._local_paths: list[str] = []
        self._identities: set[tuple[int, int]] | None = None
        folders: dict[str, str] = {}
        for kind, columns in (("images", ["source_uri", "source_name", "source_uri_bytes"]),
                              ("failures", ["source_uri", "source_uri_bytes"])):
            for record in store.shards(kind):
                try:
                    for batch in store.iter_batches(kind, columns=columns, shard_names=[record.name]):
                        self._add(batch.to_pydict(), folders)
                except SHARD_REFUSED as exc:
                    self.warnings.append(f"{kind} shard {record.name} refused: {_refusal(exc)}; the sources it "
                                         "records are not known, so restore cannot keep from writing over them")

    def _add(self, cols: dict[str, list[Any]], folders: dict[str, str]) -> None:
        for uri, _ in _uris_and_names(cols):
            if uri is None:
                continue
            path = local_path(uri)  # the reading side's rule: file:////x is /x, a::b.png a file
            if path is None:
                self.remote.add(uri)
                continue
            try:
                self._add_local(path, folders)
            except (OSError, ValueError):  # a path this system cannot even name: never a target
                continue

    def _add_local(self, path: str, folders: dict[str, str]) -> None:
        path = os.path.abspath(path)
        folder, base = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        self.local.add(os.path.join(folders[folder], base))
        if os.path.islink(path):
            self.local.add(os.path.realpath(path))
        self._local_paths.append(path)

    def is_local_source(self, real_path: str, identity: tuple[int, int] | None) -> bool:
        """Whether a local target (its real path; its device and inode if it exists) is a source."""
        if real_path in self.local:
            return True
        if identity is None:
            return False
        if self._identities is None:
            self._identities = set()
            for path in self._local_paths:
                try:
                    st = os.stat(path)
                except (OSError, ValueError):
                    continue
                self._identities.add((st.st_dev, st.st_ino))
        return identity in self._identities


class _LocalTargets:
    """Targets under a local DEST: contained, never through a link, never a source."""

    def __init__(self, destination: LocalDestination, sources: _Sources) -> None:
        self.dest = destination
        self.label = destination.label
        self.sources = sources
        self.warnings = sources.warnings

    def exists(self, relative: str) -> bool:
        """Whether the target exists; raises UnsafeTargetError for a target that leaves DEST (by
        its real path), goes through a link or a file inside DEST, or is an archived source."""
        parts = relative.split("/")
        resolved = resolved_target(self.dest.real, parts)
        if not is_within(resolved, self.dest.real):
            raise UnsafeTargetError(f"{relative!r} would be written at {resolved}, outside DEST {self.dest.label} "
                                    "(a link inside DEST points out of it); remove the link or choose another DEST")
        real = self.dest.real_path(relative)
        identity = self.dest.identity(relative)  # None: nothing there
        if self.sources.is_local_source(real, identity) or resolved in self.sources.local:
            raise UnsafeTargetError(f"its output {real} is a source file the archive records; restore never "
                                    "writes over a source (not even with --overwrite): choose another DEST")
        return identity is not None

    def write(self, relative: str, data: bytes, overwrite: bool) -> bool:
        return self.dest.write(relative, data, overwrite)

    def url(self, relative: str) -> str:
        return LocalFileSystem().unstrip_protocol(self.dest.real_path(relative))


class _RemoteTargets:
    """Targets under an fsspec DEST (a bucket prefix): string-level containment, UTF-8 names,
    never a recorded source URL; files appear whole (a temporary name, then a move)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, label: str, sources: _Sources) -> None:
        self.fs, self.root, self.label = fs, root.rstrip("/"), label
        self.warnings = sources.warnings
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.sources = {fs._strip_protocol(u) for u in sources.remote if u.split("://", 1)[0] in protocols}

    def path(self, relative: str) -> str:
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeTargetError(f"its name {printable(relative)!r} is not valid UTF-8, which a {self.label} object "
                                    "name must be; restore it into a local DEST") from None
        path = posixpath.normpath(posixpath.join(self.root, relative))
        if not is_within(path, self.root) or path == self.root:
            raise UnsafeTargetError(f"{relative!r} would leave DEST {self.label}")
        if path in self.sources:
            raise UnsafeTargetError(f"its output {self.fs.unstrip_protocol(path)} is a source the archive records; "
                                    "restore never writes over a source (not even with --overwrite): choose another DEST")
        return path

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def write(self, relative: str, data: bytes, overwrite: bool) -> bool:
        target = self.path(relative)
        if not overwrite and self.fs.exists(target):
            return False
        tmp = f"{target}.part-{uuid.uuid4().hex[:12]}"
        try:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, target)
        except OSError as exc:
            _remove_quietly(self.fs, tmp)
            raise destination_error(self.label, exc) or exc from None
        return True

    def url(self, relative: str) -> str:
        return self.fs.unstrip_protocol(self.path(relative))


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError:
        pass


def _targets(job: RestoreJob, store: ArchiveStore) -> _LocalTargets | _RemoteTargets:
    """DEST (made if missing) as a place to write, with the archive's sources it must not touch."""
    fs, root = fsspec.core.url_to_fs(job.destination, **job.destination_storage_options)
    sources = _Sources(store)
    if isinstance(fs, LocalFileSystem):
        local = LocalDestination(root, label=job.destination)
        local.prepare()
        return _LocalTargets(local, sources)
    try:
        fs.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise destination_error(job.destination, exc) or exc from None
    return _RemoteTargets(fs, root, job.destination, sources)


# -- restoring ----------------------------------------------------------------------------------------
@dataclass
class _Row:
    """A selected row on its way to a file."""

    index: int  # in the batch
    id: str
    name: str
    relative: str  # output name under DEST


def restore(job: RestoreJob, progress: bool = True, plan: RestorePlan | None = None) -> RestoreSummary:
    """Run a restore job in this process (the CLI's path; the flow plans once, then runs one
    task per shard with that shard's part of the plan).

    Rows that cannot be restored are listed in the summary's ``bad`` and skipped, and so is
    each shard the store refuses to read (one entry; the other shards restore).

    Raises:
        Sg3ArchiveError: a selection that matches nothing, DEST is a file, other models.
        DestinationWriteError: DEST is full, read-only or not writable.
    """
    started = time.perf_counter()
    store = ArchiveStore.open(job.archive, storage_options=job.storage_options)
    plan = plan if plan is not None else plan_restore(job, store)
    summary = RestoreSummary(job.destination, warnings=[str(m) for m in getattr(store, "damage", None) or []])
    summary.bad.extend(plan.refused_shard_rows())
    fs, root = fsspec.core.url_to_fs(job.destination, **job.destination_storage_options)
    if fs.isfile(root):
        raise Sg3ArchiveError(f"DEST {job.destination} is a file; restore writes images into a folder: give a "
                              "folder (new or existing) as DEST")
    if not plan.total:
        summary.seconds = time.perf_counter() - started
        return summary
    models = load_models(job.network, job.encoder, job.device)
    codec = load_codec(store.codec_url, job.storage_options)
    mismatches = fingerprint_mismatches(store.settings, models, codec)
    if mismatches:
        raise FingerprintMismatchError("; ".join(mismatches) + "; pass the models the archive was written with")
    targets = _targets(job, store)  # only once the models load: a mistake leaves no empty DEST behind
    summary.warnings.extend(targets.warnings)
    with tqdm(total=plan.total, desc="restore", unit="img", file=sys.stderr, disable=not progress) as bar:
        for shard in plan.shards:
            for cols, rows in _shard_rows(job, store, plan, shard, targets, summary, bar):
                _restore_rows(job, models, codec, targets, cols, rows, summary, bar)
    summary.seconds = time.perf_counter() - started
    return summary


def _shard_rows(job: RestoreJob, store: ArchiveStore, plan: RestorePlan, shard: str,
                targets: _LocalTargets | _RemoteTargets, summary: RestoreSummary,
                bar: tqdm) -> Iterator[tuple[dict[str, list[Any]], list[_Row]]]:
    """Batches of one shard with the selected rows still to write (rows already there are counted
    as skipped, refused, damaged and unsafe ones recorded as bad). A shard the store refuses to
    read is one bad entry; its rows not yet yielded are not written."""
    selected = _selector(job)
    renamed, refused = plan.renamed.get(shard, {}), plan.refused.get(shard, {})
    index, done = 0, 0
    batches = store.iter_batches("images", columns=COLUMNS, shard_names=[shard], batch_size=job.batch_size)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except SHARD_REFUSED as exc:
            summary.bad.append(shard_refused(shard, _refusal(exc)))
            bar.update(max(plan.shards.get(shard, 0) - done, 0))
            return
        cols = batch.to_pydict()
        rows = []
        for i, (rid, (uri, name)) in enumerate(zip(cols["id"], _uris_and_names(cols))):
            if not selected(rid, uri, name):
                continue
            done += 1
            if index + i in refused:
                _bad(summary, bar, rid, name, refused[index + i])
                continue
            damage = _damaged_values(cols, i)
            if damage:
                _bad(summary, bar, rid, name, damage)
                continue
            row = _Row(i, rid, name, renamed.get(index + i) or output_name(name, job.format))
            try:
                there = targets.exists(row.relative)
            except UnsafeTargetError as exc:
                _bad(summary, bar, rid, name, str(exc))
                continue
            except (OSError, UnicodeError) as exc:  # this one target (a name too long, ...); DEST-wide stops
                _unwritable(summary, bar, row, exc, targets)
                continue
            if there and not job.overwrite:
                summary.skipped += 1
                bar.update(1)
                continue
            if hashlib.sha256(cols["payload"][i]).hexdigest() != cols["payload_sha256"][i]:
                _bad(summary, bar, rid, name, "its payload does not match the payload_sha256 recorded beside it "
                                              "(the archive is damaged)")
                continue
            rows.append(row)
        index += batch.num_rows
        if rows:
            yield cols, rows


# Columns a row is restored from, with the type each value must have (the schema requires them).
_VALUE_TYPES = {"payload": bytes, "payload_sha256": str, "fit": str, "mode": str}


def _damaged_values(cols: dict[str, list[Any]], i: int) -> str | None:
    """Why row ``i`` cannot be restored from its values (a null, or a value of the wrong type,
    where the schema requires one), or None when every one is there."""
    bad = [column for column, kind in _VALUE_TYPES.items() if not isinstance(cols[column][i], kind)]
    if not bad:
        return None
    return f"its {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} missing or of the wrong type (the archive is damaged)"


def _bad(summary: RestoreSummary, bar: tqdm, rid: Any, name: str | None, reason: str) -> None:
    summary.bad.append(BadRow(_shown(rid, "(no id)"), _shown(name, "(no name)"), reason))
    bar.update(1)


def _decode(codec: Any, payloads: list[bytes]) -> list[torch.Tensor | str]:
    """One W+ (or the reason it does not decode) per payload: the batch at once, and when that
    fails, one at a time so that only the bad payloads are lost."""
    try:
        return list(codec.decompress(payloads))
    except Sg3ArchiveError:
        pass
    out: list[torch.Tensor | str] = []
    for payload in payloads:
        try:
            out.append(codec.decompress([payload])[0])
        except Sg3ArchiveError as exc:
            out.append(f"its payload does not decode: {exc}")
    return out


def _restore_rows(job: RestoreJob, models: Models, codec: Any, targets: _LocalTargets | _RemoteTargets,
                  cols: dict[str, list[Any]], rows: list[_Row], summary: RestoreSummary, bar: tqdm) -> None:
    """Decode, synthesize and write one batch's rows (bad ones recorded and skipped)."""
    decoded = _decode(codec, [cols["payload"][row.index] for row in rows])
    good = []
    for row, ws in zip(rows, decoded):
        if isinstance(ws, str):
            _bad(summary, bar, row.id, row.name, ws)
        else:
            good.append((row, ws))
    if not good:
        return
    with torch.no_grad():
        images = to_uint8(models.G.synthesis(torch.stack([ws for _, ws in good]).to(models.device)))
    for (row, _), img in zip(good, images):
        try:
            data = _encode_image(job, img, cols["fit"][row.index], cols["mode"][row.index])
        except RowNotWritableError as exc:
            summary.bad.append(BadRow(row.id, row.name, str(exc), unwritable=True))
            bar.update(1)
            continue
        except (Sg3ArchiveError, ValueError, TypeError, OverflowError, OSError) as exc:
            _bad(summary, bar, row.id, row.name, f"its image cannot be rebuilt: {exc}")
            continue
        try:
            wrote = targets.write(row.relative, data, job.overwrite)
        except DestinationWriteError:
            raise
        except UnsafeTargetError as exc:
            _bad(summary, bar, row.id, row.name, str(exc))
            continue
        except (OSError, UnicodeError) as exc:
            _unwritable(summary, bar, row, exc, targets)
            continue
        if wrote:
            summary.written += 1
            summary.files.append(targets.url(row.relative))
        else:  # appeared since it was checked (another restore into the same DEST)
            summary.skipped += 1
        bar.update(1)


def _unwritable(summary: RestoreSummary, bar: tqdm, row: _Row, exc: OSError | UnicodeError,
                targets: _LocalTargets | _RemoteTargets) -> None:
    """Record a row whose own target cannot be checked or written (ENAMETOOLONG, ELOOP, ENOTDIR,
    EILSEQ, ...) as a bad row; an error that means all of DEST cannot be written stops the run."""
    if isinstance(exc, OSError):
        stop = destination_error(targets.label, exc)
        if stop is not None:
            raise stop from None
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    what = what[:1].lower() + what[1:]
    summary.bad.append(BadRow(row.id, row.name, f"cannot write {row.relative!r} in DEST: {what}", unwritable=True))
    bar.update(1)


def _encode_image(job: RestoreJob, img: np.ndarray, fit: str, source_mode: str) -> bytes:
    """The image file's bytes: back to the original size (from the row's fit record) when asked,
    in the source's mode where the format holds it.

    Raises:
        RowNotWritableError: the size is over the format's limit (checked before any work), or
            rebuilding it needs more memory than this machine has.
    """
    info = FitInfo.from_json(fit) if job.size == "original" else None
    width, height = (info.width, info.height) if info else (img.shape[1], img.shape[0])
    what = "original size" if info else "size"
    limit = FORMAT_MAX_SIDE.get(job.format)
    if limit is not None and max(width, height) > limit:
        raise RowNotWritableError(f"its {what} {width}×{height} is larger than {PIL_FORMAT[job.format]} can hold "
                                  f"({limit} px a side); restore it with --format png")
    try:
        if info is not None:
            img = unfit(img, info)
        buf = io.BytesIO()
        image = to_restored_image(img, source_mode, PIL_FORMAT[job.format])
        image.save(buf, format=PIL_FORMAT[job.format], **({"quality": 95} if job.format != "png" else {}))
        return buf.getvalue()
    except MemoryError:
        raise RowNotWritableError(f"its {what} {width}×{height} needs more memory than this machine has; "
                                  "restore it with --size generator") from None
