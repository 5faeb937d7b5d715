"""Images in and out: listing and reading sources, Pillow's decoding rules, fitting to the
generator's square and back, tensor conversion and thumbnails.

The one path from bytes to pixels is :func:`load_fitted`: compress, audit and training all call
it, so an image means the same pixels wherever it is read.

Modules, each named for what it does:

* :mod:`~sg3archive.images.sources`: naming, listing and reading sources (local or fsspec).
* :mod:`~sg3archive.images.decode`: bytes → RGB under fixed Pillow rules.
* :mod:`~sg3archive.images.fit`: the square the generator sees, its fit record, and back.
* :mod:`~sg3archive.images.resample`: Lanczos resampling with bounded memory.
* :mod:`~sg3archive.images.tensors`: arrays ↔ tensors, PIL images, grids.
* :mod:`~sg3archive.images.thumbs`: the reconstruction thumbnail.
* :mod:`~sg3archive.images.restored`: the mode a restored image is written in.
* :mod:`~sg3archive.images.load`: :func:`load_fitted`, the one bytes → fitted tensor path.
* :mod:`~sg3archive.images.errors`, :mod:`~sg3archive.images.limits`, :mod:`~sg3archive.images.rgb`:
  what the others share.

This package sits below the archive store: nothing here imports :mod:`sg3archive.store`.
"""

from __future__ import annotations

from sg3archive.images.classical import (
    BENCHMARK_CODECS,
    CLASSICAL_CODECS,
    CODEC_SETTINGS,
    ClassicalCoding,
    decode_rgb,
    encode_rgb,
    smallest_meeting,
)
from sg3archive.images.decode import ACCEPTED_FORMATS, STRIP_PIXELS, DecodedImage, decode_image
from sg3archive.images.errors import FitRecordError, ImageRejected
from sg3archive.images.fit import (
    DEFAULT_FIT,
    FIT_INFO_VERSION,
    FIT_INFO_VERSIONS,
    FIT_MODES,
    MAX_FIT_RESOLUTION,
    PAD_FIT_INFO_VERSION,
    FitInfo,
    FitMode,
    check_fit_record,
    fit_record_pixel_limit,
    fit_to_square,
    legacy_pad_box,
    pad_placement,
    refit,
    unfit,
)
from sg3archive.images.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from sg3archive.images.load import FittedImage, load_fitted
from sg3archive.images.restored import restored_mode, to_restored_image
from sg3archive.images.sources import (
    IMAGE_SUFFIXES,
    URI_LIST_SUFFIXES,
    file_kind,
    filesystem_for,
    iter_sources,
    local_path,
    read_bytes,
    sha256_hex,
)
from sg3archive.images.tensors import from_tensor, make_grid, to_pil, to_tensor, to_uint8
from sg3archive.images.thumbs import THUMB_BYTES, THUMB_SHAPE, thumbnail

__all__ = [
    "ACCEPTED_FORMATS", "DEFAULT_FIT", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "FIT_INFO_VERSION", "FIT_INFO_VERSIONS", "FIT_MODES",
    "IMAGE_SUFFIXES", "MAX_FIT_RESOLUTION", "PAD_FIT_INFO_VERSION", "STRIP_PIXELS", "THUMB_BYTES", "THUMB_SHAPE",
    "URI_LIST_SUFFIXES", "DecodedImage", "FitInfo", "FitMode", "FitRecordError", "FittedImage", "ImageRejected",
    "check_fit_record", "decode_image", "file_kind", "filesystem_for", "fit_record_pixel_limit", "fit_to_square",
    "from_tensor", "iter_sources", "legacy_pad_box", "load_fitted", "local_path", "make_grid", "pad_placement",
    "read_bytes", "refit", "restored_mode", "sha256_hex", "thumbnail", "to_pil", "to_restored_image", "to_tensor",
    "to_uint8", "unfit",
    "BENCHMARK_CODECS", "CLASSICAL_CODECS", "CODEC_SETTINGS", "ClassicalCoding", "decode_rgb", "encode_rgb",
    "smallest_meeting",
]
