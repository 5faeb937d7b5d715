"""Output formats and the step from a restored image to file bytes: a latent row's synthesized
square back to the original size when asked (from the row's fit record), a classical or original
row's decoded image as it is, or fitted to the generator's square when asked; each written in the
source's mode where the format holds it.

This module is the one home of what each output format is: its suffix (output names use it),
its Pillow name, and the largest side it can hold.

``unfit``, ``refit`` and ``to_restored_image`` are looked up on the :mod:`sg3archive.pipeline.restore`
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

__all__ = ["FORMAT_MAX_SIDE", "PIL_FORMAT", "SUFFIX", "check_size", "encode_decoded", "encode_image"]

SUFFIX = {"png": ".png", "webp": ".webp", "jpeg": ".jpg"}
PIL_FORMAT = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}
# Output formats' largest side in pixels (libwebp: 16383; libjpeg: 65500, though JPEG itself names 65535).
FORMAT_MAX_SIDE = {"webp": 16383, "jpeg": 65500}
# Pillow's save options per format (lossy formats at a high quality).
SAVE_OPTIONS: dict[str, dict[str, int]] = {"png": {}, "webp": {"quality": 95}, "jpeg": {"quality": 95}}


def check_size(job: RestoreJob, width: int, height: int, what: str = "original size") -> None:
    """Refuse, before any work, an output too large for the job's format.

    Raises:
        RowNotWritableError: a side is over the format's limit.
    """
    limit = FORMAT_MAX_SIDE.get(job.format)
    if limit is not None and max(width, height) > limit:
        raise RowNotWritableError(f"its {what} {width}×{height} is larger than {PIL_FORMAT[job.format]} can hold "
                                  f"({limit} px a side); restore it with --format png")


def _save(job: RestoreJob, img: np.ndarray, source_mode: str) -> bytes:
    """``img`` (HWC uint8 RGB) as the job's format, in the restored mode of ``source_mode``."""
    package = sys.modules["sg3archive.pipeline.restore"]  # the patch point (see the module's docstring)
    buf = io.BytesIO()
    image = package.to_restored_image(img, source_mode, PIL_FORMAT[job.format])
    image.save(buf, format=PIL_FORMAT[job.format], **SAVE_OPTIONS[job.format])
    return buf.getvalue()


def encode_image(job: RestoreJob, img: np.ndarray, fit: str, source_mode: str) -> bytes:
    """The image file's bytes for one synthesized ``img`` (HWC uint8) of a latent row.

    Raises:
        RowNotWritableError: the size is over the format's limit (checked before any work), or
            rebuilding it needs more memory than this machine has.
        Sg3ArchiveError, ValueError: a damaged fit record or mode.
    """
    package = sys.modules["sg3archive.pipeline.restore"]  # the patch point (see the module's docstring)
    info = FitInfo.from_json(fit) if job.size == "original" else None
    width, height = (info.width, info.height) if info else (img.shape[1], img.shape[0])
    what = "original size" if info else "size"
    check_size(job, width, height, what)
    try:
        if info is not None:
            img = package.unfit(img, info)
        return _save(job, img, source_mode)
    except MemoryError:
        raise RowNotWritableError(f"its {what} {width}×{height} needs more memory than this machine has; "
                                  "restore it with --size generator") from None


def encode_decoded(job: RestoreJob, rgb: np.ndarray, fit: str, source_mode: str) -> bytes:
    """The image file's bytes for a classical or original row, from its decoded ``rgb`` (HWC
    uint8 at the original size): written as it is, or with ``--size generator`` fitted to the
    generator's square as compress fitted it (``refit`` with the row's fit record), so the
    option means the same for every row. The caller checks the original size against the
    format (:func:`check_size`) before decoding.

    Raises:
        RowNotWritableError: writing it needs more memory than this machine has.
        Sg3ArchiveError, ValueError: a damaged fit record (generator size) or mode.
    """
    package = sys.modules["sg3archive.pipeline.restore"]  # the patch point (see the module's docstring)
    width, height = rgb.shape[1], rgb.shape[0]
    try:
        if job.size == "generator":
            info = FitInfo.from_json(fit)
            rgb = package.refit(rgb, info)
            check_size(job, rgb.shape[1], rgb.shape[0], "size")
        return _save(job, rgb, source_mode)
    except MemoryError:
        raise RowNotWritableError(f"its original size {width}×{height} needs more memory than this machine has") \
            from None


_encode_image = encode_image  # the name before issue 12
