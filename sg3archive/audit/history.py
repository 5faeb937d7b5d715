"""The archive's audit history: one small immutable Parquet file per audit under ``_audit/``.

Each file is named ``<started>-<8 hex>-<sha256 of the file>.parquet``: the name carries the
checksum of the content, so a changed byte anywhere in a record is found when it is read
(:func:`load_history` lists it as a problem; :func:`read_history` raises). Records written before
names carried a checksum (``<started>-<8 hex>.parquet``) are read as ``unverified``. History files
are archive files: read with a size cap, regular files only, never through a symlink. They are
written whole (:func:`sg3archive.atomic.write_bytes`) in the folder the archive layout names
(:data:`sg3archive.store.layout.AUDIT_DIR`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sg3archive import atomic
from sg3archive.audit.checks import AuditFindings
from sg3archive.errors import Sg3ArchiveError
from sg3archive.store.bounded import (
    HISTORY_RECORD_CAP,
    ShardRefusedError,
    UnsafeArchiveFileError,
    check_footer,
    own_folder,
    read_bounded,
)
from sg3archive.store.layout import AUDIT_DIR  # the folder's name: one home, the archive layout

SCHEMA = pa.schema([
    ("started_at", pa.string()), ("passed", pa.bool_()), ("seed", pa.int64()), ("sampled", pa.int64()),
    ("compared", pa.int64()), ("problems", pa.int64()), ("mean_psnr", pa.float64()), ("mean_ms_ssim", pa.float64()),
    ("max_thumb_diff", pa.float64()), ("seconds", pa.float64()), ("record", pa.string()),
])
CHECKED_NAME = re.compile(r"^(?P<stem>.+)-(?P<sha256>[0-9a-f]{64})\.parquet$")
TEMP_PREFIX = atomic.TEMP_PREFIX  # half-written records (never read) start with this


class AuditHistoryDamagedError(Sg3ArchiveError):
    """A record of the archive's audit history does not match its checksum or cannot be read."""


@dataclass(frozen=True)
class HistoryReport:
    """What ``_audit/`` holds: ``rows`` (oldest first; each with ``checksum``: "verified" or
    "unverified"), ``problems`` (one line per damaged or unreadable record, which is not in rows)."""

    rows: tuple[dict[str, Any], ...] = ()
    problems: tuple[str, ...] = ()


History = HistoryReport  # the name before issue 12


def append_record(result: AuditFindings, storage_options: dict | None = None) -> str:
    """Write this audit's row; returns its URL. The file's sha256 is part of its name; it is written
    whole under that name (:func:`sg3archive.atomic.write_bytes`), so history files are never partial."""
    fs, root = fsspec.core.url_to_fs(result.archive, **(storage_options or {}))
    folder = own_folder(fs, root, AUDIT_DIR, result.archive)  # never write a record through a link out
    rec = result.record()
    m = rec["metrics"]
    row = {"started_at": result.started_at, "passed": result.passed, "seed": result.seed, "sampled": result.sampled,
           "compared": result.compared, "problems": len(result.problems), "mean_psnr": m["psnr"]["mean"],
           "mean_ms_ssim": m["ms_ssim"]["mean"], "max_thumb_diff": m["thumb_diff"]["max"],
           "seconds": result.seconds, "record": json.dumps(rec, default=str)}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), sink)
    data = sink.getvalue().to_pybytes()
    stamp = result.started_at.replace(":", "").replace("-", "")
    name = f"{stamp}-{uuid.uuid4().hex[:8]}-{hashlib.sha256(data).hexdigest()}.parquet"
    path = posixpath.join(folder, name)
    atomic.write_bytes(fs, path, data)
    return fs.unstrip_protocol(path)


def load_history(archive: str, storage_options: dict | None = None) -> HistoryReport:
    """Every past audit of ``archive``, each record checked against the checksum in its name.
    Never raises for a bad record: it is left out of ``rows`` and described in ``problems``."""
    fs, root = fsspec.core.url_to_fs(archive, **(storage_options or {}))
    root = root.rstrip("/")
    folder = posixpath.join(root, AUDIT_DIR)
    fs.invalidate_cache(folder)
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return HistoryReport()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for name in names:
        if not name.endswith(".parquet") or name.startswith("."):
            continue
        row, problem = _read_record(fs, posixpath.join(folder, name), name, root)
        if row is not None:
            rows.append(row)
        else:
            problems.append(problem or f"audit history record {AUDIT_DIR}/{name} is unreadable")
    rows.sort(key=lambda r: str(r["started_at"]))
    return HistoryReport(tuple(rows), tuple(problems))


def _read_record(fs: fsspec.AbstractFileSystem, path: str, name: str, root: str) -> tuple[dict | None, str | None]:
    """(row, None) for a good record; (None, problem) for a damaged or unreadable one."""
    where = f"audit history record {AUDIT_DIR}/{name}"
    advice = "the record is not used; restore it from a backup, or delete it to accept the loss"
    try:
        data = read_bounded(fs, path, HISTORY_RECORD_CAP, where, root)
    except UnsafeArchiveFileError as exc:
        return None, f"{exc}; {advice}"
    except OSError as exc:
        return None, f"{where} is unreadable ({exc}); {advice}"
    checked = CHECKED_NAME.match(name)
    if checked and hashlib.sha256(data).hexdigest() != checked["sha256"]:
        return None, f"{where} is damaged (checksum mismatch: its content is not what its name records); {advice}"
    try:
        check_footer(pq.ParquetFile(pa.BufferReader(data)).metadata, len(data), name)
        table = pq.read_table(pa.BufferReader(data))
        rows = table.drop_columns(["record"]).to_pylist()
    except ShardRefusedError as exc:
        return None, f"{where} is refused ({exc.why}); {advice}"
    except (pa.ArrowException, KeyError, ValueError, OSError) as exc:
        return None, f"{where} is unreadable ({' '.join(str(exc).split())}); {advice}"
    if len(rows) != 1 or "started_at" not in rows[0]:
        return None, f"{where} is not an audit record (it holds {len(rows)} rows); {advice}"
    return dict(rows[0], checksum="verified" if checked else "unverified"), None


def read_history(archive: str, storage_options: dict | None = None) -> list[dict]:
    """Past audits, oldest first (each row's ``checksum`` is "verified", or "unverified" for a
    record written before records carried one).

    Raises:
        AuditHistoryDamagedError: a record does not match its checksum or cannot be read (the
            message names each; :func:`load_history` returns the good rows and the problems).
    """
    history = load_history(archive, storage_options)
    if history.problems:
        raise AuditHistoryDamagedError(
            f"{len(history.problems)} record(s) of the audit history of {archive} are damaged: "
            + " | ".join(history.problems))
    return list(history.rows)
