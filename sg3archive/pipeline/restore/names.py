"""Output names: where under DEST a row's image goes.

A row restores to ``DEST/<source_name>`` with the suffix set to the output format (rows of
archives written before that column existed use their URI's path without the scheme). Every root
or anchor is removed (leading ``/``, ``//``, ``\\\\``, ``\\\\?\\``, a drive letter that is a whole first
part, ``C:/``); every other character is kept (``a::b.png``); a name with ``.``/``..`` parts is
refused (:func:`output_name`). When two rows would get the same file, the row first in archive
order keeps the name and later ones get ``.<id[:8]>`` before the suffix (:class:`Names`); names
compare case-insensitively, as some filesystems do.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import PurePosixPath

from sg3archive.errors import Sg3ArchiveError
from sg3archive.pipeline.restore.encode import SUFFIX
from sg3archive.store.format import uri_path

__all__ = ["Names", "output_name"]

_DRIVE = re.compile(r"[A-Za-z]:")  # a whole first path part: C:/x.png, C:\x.png
_DRIVE_RELATIVE = re.compile(r"[A-Za-z]:(?=.)", re.DOTALL)  # Windows only: C:x.png


def output_name(name: str, fmt: str) -> str:
    """A relative output path for a row name (or, for a URI, its path without the scheme) with the
    suffix set to the format: backslashes read as slashes; every root or anchor dropped (leading
    ``/``, ``//``, a ``\\\\?\\`` or ``\\\\.\\`` device prefix, a drive letter that is a whole first part,
    ``C:/x.png``, and on Windows a drive-relative ``C:x.png``'s ``C:``) and empty parts too; every
    other character kept (``a::b.png``, POSIX ``C:x.png``, a folder ``x:`` after the first part).
    Refuses names that would leave the destination (``.``/``..`` parts) or hold a NUL."""
    text = uri_path(name) if "://" in name else name
    text = text.replace("\\", "/")
    pieces = [p for p in text.split("/") if p]
    if text.startswith("//") and pieces and pieces[0] in ("?", "."):  # \\?\C:\x, \\.\C:\x
        pieces = pieces[1:]
    if len(pieces) > 1 and _DRIVE.fullmatch(pieces[0]):  # C:/x.png (a separator follows the drive)
        pieces = pieces[1:]
    elif pieces and os.name == "nt" and _DRIVE_RELATIVE.match(pieces[0]):  # C:x.png: relative to C:'s folder
        pieces[0] = pieces[0][2:]
    if not pieces or any(p in (".", "..") or "\x00" in p for p in pieces):
        raise Sg3ArchiveError(f"cannot derive a safe output name from {name!r}: it would leave the destination")
    try:
        return str(PurePosixPath(*pieces).with_suffix(SUFFIX[fmt]))
    except ValueError as exc:
        raise Sg3ArchiveError(f"cannot derive an output name from {name!r}: {exc}") from None


class Names:
    """Output names taken so far (case-insensitively): files, and the folders they sit in."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()
        # (folder, stem, id, suffix) → the next counter to try for "<stem>.<id>-<n><suffix>": each
        # counter below it was taken when passed, and names are never given back, so the first
        # free one is the same as when searching from 2, and each claim is O(1) amortised however
        # many copies of one row an archive holds.
        self._next: dict[tuple[str, str, str, str], int] = {}

    def claim(self, name: str, rid: str) -> str:
        """``name``, or when an earlier row took it (or a folder of that name is needed), ``name``
        with the id before the suffix (its first 8 hex, then the whole id, then the whole id and
        ``-2``, ``-3``, ...); a folder on the way that is an earlier row's file gets the id after
        its name."""
        folder, base = posixpath.split(name)
        folder = self._free_folder(folder, rid)
        stem, suffix = posixpath.splitext(base)
        for candidate in (base, f"{stem}.{rid[:8]}{suffix}", f"{stem}.{rid}{suffix}"):
            full = self._take(posixpath.join(folder, candidate), folder)
            if full is not None:
                return full
        series = (folder, stem, rid, suffix)
        n = self._next.get(series, 2)
        while True:  # the same source archived more than once
            full = self._take(posixpath.join(folder, f"{stem}.{rid}-{n}{suffix}"), folder)
            n += 1
            if full is not None:
                self._next[series] = n
                return full

    def _take(self, full: str, folder: str) -> str | None:
        """``full`` claimed as a file (its folders as folders), or None when it is taken."""
        key = full.casefold()
        if key in self.files or key in self.folders:
            return None
        self.files.add(key)
        self._add_folders(folder)
        return full

    def _free_folder(self, folder: str, rid: str) -> str:
        parts = folder.split("/") if folder else []
        for i in range(len(parts)):
            if "/".join(parts[: i + 1]).casefold() in self.files:
                tag = f"{parts[i]}.{rid[:8]}"
                while "/".join([*parts[:i], tag]).casefold() in self.files:
                    tag += "_"
                parts[i] = tag
        return "/".join(parts)

    def _add_folders(self, folder: str) -> None:
        parts = folder.split("/") if folder else []
        for i in range(len(parts)):
            self.folders.add("/".join(parts[: i + 1]).casefold())


_Names = Names  # the name before issue 12
