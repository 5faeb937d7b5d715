"""Codec errors (part of sg3archive's single error hierarchy)."""

from __future__ import annotations

from sg3archive.errors import Sg3ArchiveError


class CodecError(Sg3ArchiveError):
    """A codec was used wrongly (bad shapes, values out of range, unfitted model)."""


class PayloadError(CodecError):
    """A payload is corrupted, truncated, or not an sg3archive latent payload."""


class ModelMismatchError(CodecError):
    """A payload was made with a different codec model than the one decoding it."""
