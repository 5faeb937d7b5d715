"""The default limits on one input and how limits are written in messages.

:data:`DEFAULT_MAX_PIXELS` is the one pixel limit compress, audit and training apply when a job
names none (``--max-pixels``); :data:`DEFAULT_MAX_BYTES` the one file-size limit (``max_bytes``).
"""

from __future__ import annotations

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_BYTES = 512 * 1024**2


def human_bytes(n: int) -> str:
    """``n`` bytes as a message shows them: ``"1.5 MiB"``, ``"512 bytes"``."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def human_pixels(n: int) -> str:
    """``n`` pixels as a message shows them: ``"64 Mpx"``, ``"900 px"``."""
    for unit, scale in (("Gpx", 1e9), ("Mpx", 1e6), ("kpx", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} px"

