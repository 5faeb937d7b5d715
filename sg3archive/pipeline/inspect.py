"""What an archive holds: counts, sizes, bit allocation, fingerprints, failures, orphans; its
shards; its rows (ids and names, what restore's --ids and --glob select by)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.compute as pc

from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import row_name


def inspect_archive(url: str, storage_options: dict | None = None) -> dict:
    """A JSON-able description of the archive at ``url`` (from its manifest: committed data only)."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    images = store.read_table("images", columns=["payload", "source_size", "psnr", "ms_ssim"])
    failures = store.read_table("failures", columns=["source_uri", "stage", "reason"])
    sizes = pc.binary_length(images["payload"]) if images.num_rows else None
    payload_bytes = int(pc.sum(sizes).as_py() or 0) if sizes is not None else 0
    source_bytes = int(pc.sum(images["source_size"]).as_py() or 0) if images.num_rows else 0
    manifest = store.manifest()

    def mean(col: str) -> float | None:
        return pc.mean(images[col]).as_py() if images.num_rows else None

    return {
        "archive": url,
        "generation": manifest.generation if manifest is not None else 0,
        "shards": {kind: len(store.shards(kind)) for kind in ("images", "failures")},
        "images": images.num_rows,
        "failures": failures.num_rows,
        "payload_bytes": payload_bytes,
        "bytes_per_image": payload_bytes / images.num_rows if images.num_rows else None,
        "source_bytes": source_bytes,
        "ratio": source_bytes / payload_bytes if payload_bytes else None,
        "mean_psnr": mean("psnr"),
        "mean_ms_ssim": mean("ms_ssim"),
        "settings": store.settings,
        "failure_list": failures.to_pylist(),
        "orphans": store.orphans(),
    }


def list_shards(url: str, storage_options: dict | None = None) -> list[dict]:
    """The committed shards in commit order: file name (restore's --shard), kind, rows, bytes."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    return [{"name": r.name, "kind": r.kind, "rows": r.rows, "bytes": r.bytes, "committed_at": r.committed_at}
            for r in store.shards()]


def iter_rows(url: str, storage_options: dict | None = None) -> Iterator[dict]:
    """One small record per image row, in archive order, streamed shard by shard: ``id``,
    ``name`` (relative to the compressed source; what restore's --glob matches and the output is
    named after), ``source_uri``, ``payload_bytes``, encode-time ``psnr`` (dB) and ``shard``."""
    store = ArchiveStore.open(url, storage_options=storage_options)
    for record in store.shards("images"):
        columns = ["id", "source_name", "source_uri", "payload", "psnr"]
        for batch in store.iter_batches("images", columns=columns, shard_names=[record.name]):
            sizes = pc.binary_length(batch.column("payload")).to_pylist()
            cols = {c: batch.column(c).to_pylist() for c in ("id", "source_name", "source_uri", "psnr")}
            for rid, name, uri, size, quality in zip(cols["id"], cols["source_name"], cols["source_uri"], sizes,
                                                     cols["psnr"]):
                yield {"id": rid, "name": row_name(name, uri), "source_uri": uri, "payload_bytes": size,
                       "psnr": quality, "shard": record.name}
