"""Output formats and the step from a synthesized square to file bytes: back to the original
size when asked (from the row's fit record), in the source's mode where the format holds it.

This module is the one home of what each output format is: its suffix (output names use it),
its Pillow name, and the largest side it can hold.

``unfit`` and ``to_restored_image`` are looked up on the :mod:`sg3archive.pipeline.restore`
package when an image is encoded, so that a test or benchmark that replaces them there (as it
could when restore was one module) still reaches this step.
"""

from __future__ import annotations

import io
import sys

import numpy as np

from sg3archive.images import FitInfo
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore.report import RowNotWritableError

__all__ = ["FORMAT_MAX_SIDE", "PIL_FORMAT", "SUFFIX", "encode_image"]

SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
# Output formats' largest side in pixels (libwebp: 16383; libjpeg: 65500, though JPEG itself names 65535).
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500}
# Pillow's save options per format (lossy formats at a high quality).
SAVE_OPTIONS: dict[str, dict[str, int]] = {"png": {}, "webp": {"quality": 95}, "jpeg": {"quality": 95}}


def encode_image(job: RestoreJob, img: np.ndarray, fit: str, source_mode: str) -> bytes:
    """The image file's bytes for one synthesized ``img`` (HWC uint8).

    Raises:
        RowNotWritableError: the size is over the format's limit (checked before any work), or
            rebuilding it needs more memory than this machine has.
        Sg3ArchiveError, ValueError: a damaged fit record or mode.
    """
    package = sys.modules["sg3archive.pipeline.restore"]  # the patch point (see the module's docstring)
    info = FitInfo.from_json(fit) if job.size == "original" else None
    width, height = (info.width, info.height) if info else (img.shape[1], img.shape[0])
    what = "original size" if info else "size"
    limit = FORMAT_MAX_SIDE.get(job.format)
    if limit is not None and max(width, height) > limit:
        raise RowNotWritableError(f"its {what} {width}×{height} is larger than {PIL_FORMAT[job.format]} can hold "
                                  f"({limit} px a side); restore it with --format png")
    try:
        if info is not None:
            img = package.unfit(img, info)
        buf = io.BytesIO()
        image = package.to_restored_image(img, source_mode, PIL_FORMAT[job.format])
        image.save(buf, format=PIL_FORMAT[job.format], **SAVE_OPTIONS[job.format])
        return buf.getvalue()
    except MemoryError:
        raise RowNotWritableError(f"its {what} {width}×{height} needs more memory than this machine has; "
                                  "restore it with --size generator") from None


_encode_image = encode_image  # the name before issue 12
