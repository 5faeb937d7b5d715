"""What an archive holds: counts, sizes, bit allocation, fingerprints, failures, orphans."""

from __future__ import annotations

import pyarrow.compute as pc

from sg3archive.store.archive import ArchiveStore


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
