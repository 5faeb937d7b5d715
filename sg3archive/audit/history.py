"""The archive's audit history: one small immutable Parquet file per audit under ``_audit/``."""

from __future__ import annotations

import json
import posixpath
import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from sg3archive.audit.checks import AuditResult

AUDIT_DIR = "_audit"
SCHEMA = pa.schema([
    ("started_at", pa.string()), ("passed", pa.bool_()), ("seed", pa.int64()), ("sampled", pa.int64()),
    ("compared", pa.int64()), ("problems", pa.int64()), ("mean_psnr", pa.float64()), ("mean_ms_ssim", pa.float64()),
    ("max_thumb_diff", pa.float64()), ("seconds", pa.float64()), ("record", pa.string()),
])


def append_record(result: AuditResult, storage_options: dict | None = None) -> str:
    """Write this audit's row; returns its URL. Written under a unique name in one PUT (or a
    local rename), so history files are never partial."""
    fs, root = fsspec.core.url_to_fs(result.archive, **(storage_options or {}))
    folder = posixpath.join(root, AUDIT_DIR)
    fs.makedirs(folder, exist_ok=True)
    rec = result.record()
    m = rec["metrics"]
    row = {"started_at": result.started_at, "passed": result.passed, "seed": result.seed, "sampled": result.sampled,
           "compared": result.compared, "problems": len(result.problems), "mean_psnr": m["psnr"]["mean"],
           "mean_ms_ssim": m["ms_ssim"]["mean"], "max_thumb_diff": m["thumb_diff"]["max"],
           "seconds": result.seconds, "record": json.dumps(rec, default=str)}
    name = f"{result.started_at.replace(':', '').replace('-', '')}-{uuid.uuid4().hex[:8]}.parquet"
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([row], schema=SCHEMA), sink)
    path = posixpath.join(folder, name)
    with fs.open(path, "wb") as f:
        f.write(sink.getvalue().to_pybytes())
    return fs.unstrip_protocol(path)


def read_history(archive: str, storage_options: dict | None = None) -> list[dict]:
    """Past audits, oldest first."""
    fs, root = fsspec.core.url_to_fs(archive, **(storage_options or {}))
    folder = posixpath.join(root, AUDIT_DIR)
    if not fs.exists(folder):
        return []
    rows = []
    for path in sorted(fs.find(folder)):
        if path.endswith(".parquet"):
            with fs.open(path, "rb") as f:
                rows += pq.read_table(f).drop_columns(["record"]).to_pylist()
    return sorted(rows, key=lambda r: r["started_at"])
