"""Whole-or-nothing writes: the one home of "a temporary sibling, then a rename".

A reader never sees a partial file under the final name. On a local disk the data goes to a
temporary sibling (created exclusively), is flushed to disk, renamed over the target and the
folder entry is synced; on an object store one PUT is already atomic.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

TEMP_PREFIX = ".tmp-"  # temporary siblings start with this; readers skip such names


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of local ``path`` to write (a file or a folder); when the block
    ends without error it replaces ``path`` in one rename, otherwise it is removed."""
    target = Path(path)
    temp = target.with_name(f"{TEMP_PREFIX}{target.name}.{uuid.uuid4().hex[:12]}")
    try:
        yield temp
        if temp.is_dir() and target.is_dir():
            old = target.with_name(f"{TEMP_PREFIX}{target.name}.old.{uuid.uuid4().hex[:12]}")
            os.replace(target, old)
            os.replace(temp, target)
            _remove(old)
        else:
            os.replace(temp, target)
        fsync_folder(target.parent)
    finally:
        _remove(temp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``fs`` whole or not at all (see the module docstring)."""
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    with replacing(path) as temp:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
