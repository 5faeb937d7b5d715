"""Process settings read from the environment: the ONE place sg3archive reads ``os.environ``.

Each setting is a small function read at call time (so a test's ``monkeypatch.setenv`` and a
shell's ``export`` both take effect without re-importing anything). The variable names live
here too, so messages that mention them quote the same spelling.
"""

from __future__ import annotations

import os
from pathlib import Path

VERBOSE_ENV = "SG3ARCHIVE_VERBOSE"  # any non-empty value: tracebacks for unexpected errors, like -v
CACHE_ENV = "SG3ARCHIVE_CACHE"  # root of sg3archive's cache (default ~/.cache/sg3archive)
LPIPS_WEIGHTS_ENV = "SG3ARCHIVE_LPIPS_WEIGHTS"  # a folder or .pth file holding LPIPS's backbone weights
LPIPS_DOWNLOAD_ENV = "SG3ARCHIVE_LPIPS_DOWNLOAD"  # "0": never try torchvision's download (air-gapped, tests)


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def verbose() -> bool:
    """Whether ``$SG3ARCHIVE_VERBOSE`` asks for tracebacks of unexpected errors."""
    return _get(VERBOSE_ENV) is not None


def cache_root() -> Path:
    """``$SG3ARCHIVE_CACHE`` or ``~/.cache/sg3archive``."""
    root = _get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "sg3archive"


def lpips_weights_path() -> str | None:
    """``$SG3ARCHIVE_LPIPS_WEIGHTS`` (a folder or file), or None when unset or empty."""
    return _get(LPIPS_WEIGHTS_ENV)


def lpips_download_allowed() -> bool:
    """False when ``$SG3ARCHIVE_LPIPS_DOWNLOAD`` is ``0``: LPIPS must not try torchvision's download."""
    return os.environ.get(LPIPS_DOWNLOAD_ENV, "1").strip() != "0"


__all__ = ["CACHE_ENV", "LPIPS_DOWNLOAD_ENV", "LPIPS_WEIGHTS_ENV", "VERBOSE_ENV", "cache_root", "lpips_download_allowed",
           "lpips_weights_path", "verbose"]
