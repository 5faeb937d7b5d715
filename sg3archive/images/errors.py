"""The errors the image package raises: an input that cannot be archived (:class:`ImageRejected`)
and a damaged or forged fit record (:class:`FitRecordError`). Both are user-caused, so both
derive from :class:`~sg3archive.errors.Sg3ArchiveError`; they live apart from the code that
raises them because reading, decoding and fitting all share them.
"""

from __future__ import annotations

from sg3archive.errors import Sg3ArchiveError


class ImageRejected(Sg3ArchiveError):
    """An input cannot be archived: unreadable, truncated, too large, or of an unsupported kind.

    ``reason`` is the one-line cause (fit for a report column), ``uri`` the input it concerns.
    """

    def __init__(self, reason: str, uri: str = "") -> None:
        self.reason = reason
        self.uri = uri
        super().__init__(f"{uri}: {reason}" if uri else reason)


class FitRecordError(Sg3ArchiveError, ValueError):
    """A row's ``fit`` record is not a valid, bounded :class:`FitInfo` (damaged or forged).

    Also a ``ValueError``, so callers that caught the looser errors of earlier versions still do.
    """

