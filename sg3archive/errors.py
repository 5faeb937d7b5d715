"""The one error hierarchy of sg3archive: every message says what was wrong and what to do."""

from __future__ import annotations


class Sg3ArchiveError(Exception):
    """Base of every error sg3archive raises on purpose."""


class UnsafePickleError(Sg3ArchiveError):
    """A pickle referenced something outside the allow-list for official StyleGAN3 snapshots."""


class NetworkFormatError(Sg3ArchiveError):
    """A network file is not in a format we can read, or its contents do not fit its config."""


class FingerprintMismatchError(Sg3ArchiveError):
    """Stored weights no longer match the fingerprint recorded with them."""
