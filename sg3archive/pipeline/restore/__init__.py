"""Restore images from an archive: plan (select rows and name their outputs from the id and name
columns only), then rebuild every row's image at the original size (latent rows: payloads decoded
and synthesized in batches; classical and original rows: their stored image checked and decoded,
without the models) and write files under the destination (never outside it), skipping outputs
that already exist.

Modules, each named for what it does:

* :mod:`.names`: the output name of a row (roots and drives stripped, ``.``/``..`` refused) and
  the rule that renames later rows whose name an earlier row took.
* :mod:`.selection`: ``--ids`` / ``--glob`` / ``--shard`` and :func:`plan_restore`, which builds
  the :class:`RestorePlan` (what each selected row is written as).
* :mod:`.sources`: the archive's recorded sources, never written over.
* :mod:`.targets`: DEST as a place to write, local or a bucket prefix, never outside it.
* :mod:`.encode`: the output formats and the step from a restored image to file bytes.
* :mod:`.stored`: a classical or original row's stored image (``image_data``), read for the rows
  being written only, checked against its sha256 and decoded under a bound.
* :mod:`.report`: :class:`BadRow`, :class:`RestoreReport` (once ``RestoreSummary``), the lines
  of an incomplete run and restore's errors.
* :mod:`.run`: :func:`restore` and its named steps.

Archives are untrusted input. A row that cannot be restored (unsafe name, a required value
missing, payload or image_data that fails its sha256 or does not decode, a stored image of another
size than its row records, damaged fit record) is recorded in the report's ``bad`` list and
skipped, and so is a whole shard the store refuses to read (one entry); the others restore. A
full, read-only or unwritable DEST stops the restore with one ``DestinationWriteError`` line.

``unfit``, ``refit`` and ``to_restored_image`` are re-exported here and looked up here when an
image is encoded: replacing them on this package (a test, a benchmark) reaches the encoding step.
"""

from __future__ import annotations

from sg3archive.images import refit, to_restored_image, unfit
from sg3archive.pipeline.restore.encode import (
    FORMAT_MAX_SIDE,
    PIL_FORMAT,
    SUFFIX,
    _encode_image,
    encode_decoded,
    encode_image,
)
from sg3archive.pipeline.restore.names import Names, _Names, output_name
from sg3archive.pipeline.restore.report import (
    BadRow,
    RestoreIncompleteError,
    RestoreReport,
    RestoreSummary,
    RowNotWritableError,
    incomplete_cause,
    incomplete_text,
    merged_representations,
    not_restored_text,
    representation_counts,
    shard_refused,
)
from sg3archive.pipeline.restore.run import COLUMNS, restore, restore_images
from sg3archive.pipeline.restore.selection import NAME_COLUMNS, SHARD_REFUSED, RestorePlan, plan_restore
from sg3archive.pipeline.restore.sources import Sources, _Sources
from sg3archive.pipeline.restore.stored import STORED, ImageData, StoredImageDamaged, stored_rgb
from sg3archive.pipeline.restore.targets import LocalTargets, RemoteTargets, _LocalTargets, _RemoteTargets
from sg3archive.text import printable

__all__ = [
    "COLUMNS", "FORMAT_MAX_SIDE", "NAME_COLUMNS", "PIL_FORMAT", "SHARD_REFUSED", "SUFFIX", "BadRow", "LocalTargets",
    "Names", "RemoteTargets", "RestoreIncompleteError", "RestorePlan", "RestoreReport", "RestoreSummary",
    "RowNotWritableError", "STORED", "ImageData", "Sources", "StoredImageDamaged", "encode_decoded", "encode_image",
    "incomplete_cause", "incomplete_text", "merged_representations", "not_restored_text", "output_name", "plan_restore",
    "printable", "refit", "representation_counts", "restore", "restore_images", "shard_refused", "stored_rgb",
    "to_restored_image", "unfit",
    "_LocalTargets", "_Names", "_RemoteTargets", "_Sources", "_encode_image",
]
