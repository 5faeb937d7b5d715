"""Classical and original rows: the image an archive stores for them (``image_data``: an AVIF or
WebP file, or the source's own bytes), checked and decoded without the models.

A row's ``image_data`` must match the ``image_sha256`` recorded beside it, decode under a bound
(at most the row's own ``width × height`` pixels, itself at most the largest image any compress
run accepted) and decode to exactly that size; anything else is damage in the archive and the row
is reported, never written (:class:`StoredImageDamaged`).

``image_data`` is the one column that can be large (up to the store's per-value cap), so restore
never reads it with the other columns: :class:`ImageData` streams it for one shard, forward only,
in one pass, and only once a row of that shard needs it; a value is kept only for the row being
written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import ImageRejected, fit_record_pixel_limit
from sg3archive.images.classical import decode_rgb
from sg3archive.images.limits import human_pixels
from sg3archive.pipeline.restore.report import refusal
from sg3archive.pipeline.restore.selection import SHARD_REFUSED
from sg3archive.quality.contract import REPRESENTATIONS
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore

__all__ = ["STORED", "ImageData", "StoredImageDamaged", "representation_of", "stored_damage", "stored_rgb"]

STORED = ("classical", "original")  # the representations restored from image_data, not through the models
IMAGE_DATA_BATCH = 16  # image_data values per batch read (a row group is read whole all the same)


class StoredImageDamaged(Sg3ArchiveError):
    """A classical or original row's stored image is missing, altered or does not decode to the
    row's size: damage in the archive (``sg3archive audit`` checks it)."""


def representation_of(value: Any) -> str | None:
    """A row's representation (``latent`` for a null: rows before format version 4), or None when
    the value is not one this version restores."""
    kind = fmt.row_representation({"representation": value})
    return kind if kind in REPRESENTATIONS else None


def stored_damage(cols: dict[str, list[Any]], i: int) -> str | None:
    """Why classical or original row ``i`` cannot be restored from its small values (the hash or
    the size missing, of the wrong type, or not positive), or None when they are usable."""
    bad = [c for c in ("image_sha256",) if not isinstance(cols[c][i], str) or not cols[c][i]]
    bad += [c for c in ("width", "height")
            if not isinstance(cols[c][i], int) or isinstance(cols[c][i], bool) or cols[c][i] < 1]
    if not bad:
        return None
    return (f"its {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} missing or of the wrong type "
            "(the archive is damaged)")


def stored_rgb(data: Any, sha256: str, width: int, height: int) -> np.ndarray:
    """The ``[height, width, 3]`` uint8 pixels of a row's ``image_data``, checked against its
    ``image_sha256`` first and decoded under a bound of ``width × height`` pixels.

    Raises:
        StoredImageDamaged: missing, not matching its hash, over the largest size any compress
            run accepted, not decodable, or decoding to another size.
        MemoryError: decoding it needs more memory than this machine has.
    """
    if not isinstance(data, bytes) or not data:
        raise StoredImageDamaged("its image_data is missing (the archive is damaged)")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoredImageDamaged("its image_data does not match the image_sha256 recorded beside it "
                                 "(the archive is damaged)")
    limit = fit_record_pixel_limit()
    if width * height > limit:
        raise StoredImageDamaged(f"its size {width}×{height} is over the {human_pixels(limit)} limit no archived "
                                 "image exceeds (the archive is damaged)")
    try:
        rgb = decode_rgb(data, max_pixels=width * height)
    except ImageRejected as exc:
        raise StoredImageDamaged(f"its image_data does not decode: {exc.reason} (the archive is damaged)") from None
    if rgb.shape[:2] != (height, width):
        raise StoredImageDamaged(f"its image_data decodes to {rgb.shape[1]}×{rgb.shape[0]}, not the {width}×{height} "
                                 "its row records (the archive is damaged)")
    return rgb


class ImageData:
    """One images shard's ``image_data`` column, read forward only: :meth:`at` a row position
    (positions asked in increasing order). Nothing is read until a row asks; what is held at a
    time is one batch of the column as Arrow buffers (the row group it comes from is read whole),
    and the value of the row asked for."""

    def __init__(self, store: ArchiveStore, shard: str) -> None:
        self.store, self.shard = store, shard
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._values: pa.Array | None = None
        self._start = 0  # the shard position of self._values[0]
        self._failed: str | None = None

    def at(self, position: int) -> bytes | None:
        """The ``image_data`` of the row at ``position`` in the shard (None: a null).

        Raises:
            StoredImageDamaged: the column cannot be read there (the shard is refused, or holds
                fewer values than rows); every later row of the shard is refused the same way.
            ValueError: ``position`` before one asked already.
        """
        if self._failed is not None:
            raise StoredImageDamaged(self._failed)
        if position < self._start:
            raise ValueError(f"image_data is read forward only: row {position} is before row {self._start}")
        if self._batches is None:
            self._batches = self.store.iter_batches("images", columns=["image_data"], shard_names=[self.shard],
                                                    batch_size=IMAGE_DATA_BATCH)
        try:
            while self._values is None or position >= self._start + len(self._values):
                if self._values is not None:
                    self._start += len(self._values)
                    self._values = None
                self._values = next(self._batches).column(0)
        except StopIteration:
            self._failed = f"the shard holds no image_data for row {position} (the archive is damaged)"
            raise StoredImageDamaged(self._failed) from None
        except SHARD_REFUSED as exc:
            self._failed = f"its image_data cannot be read: {refusal(exc)} (the archive is damaged)"
            raise StoredImageDamaged(self._failed) from None
        value = self._values[position - self._start].as_py()
        return value if isinstance(value, bytes) else None
