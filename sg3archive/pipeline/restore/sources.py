"""Source protection: the paths and URLs an archive records as its sources, which restore must
never write over (not even with ``overwrite``).

Sources are those of every images row and of every failures row: a source that could not be
archived has no copy in the archive, so it must never be written over either.
"""

from __future__ import annotations

import os
from typing import Any

from sg3archive.images import local_path
from sg3archive.pipeline.restore.report import refusal
from sg3archive.pipeline.restore.selection import SHARD_REFUSED, uris_and_names
from sg3archive.store.archive import ArchiveStore

__all__ = ["Sources"]


class Sources:
    """The archive's recorded sources, as paths a target must never be: local sources by real
    path (and, when a target exists, by device and inode), remote ones by URL.

    Sources are those of every images row and of every failures row: a source that could not be
    archived (say ``a.png`` that does not decode, beside an archived ``a.jpg`` that restores to
    ``a.png``) has no copy in the archive, so it must never be written over either. A shard the
    store refuses to read is left out and named in ``warnings`` (its sources are not known).
    """

    def __init__(self, store: ArchiveStore) -> None:
        self.local: set[str] = set()
        self.remote: set[str] = set()
        self.warnings: list[str] = []
        self._local_paths: list[str] = []
        self._identities: set[tuple[int, int]] | None = None
        folders: dict[str, str] = {}
        for kind, columns in (("images", ["source_uri", "source_name", "source_uri_bytes"]),
                              ("failures", ["source_uri", "source_uri_bytes"])):
            for record in store.shards(kind):
                try:
                    for batch in store.iter_batches(kind, columns=columns, shard_names=[record.name]):
                        self._add(batch.to_pydict(), folders)
                except SHARD_REFUSED as exc:
                    self.warnings.append(f"{kind} shard {record.name} refused: {refusal(exc)}; the sources it "
                                         "records are not known, so restore cannot keep from writing over them")

    def _add(self, cols: dict[str, list[Any]], folders: dict[str, str]) -> None:
        for uri, _ in uris_and_names(cols):
            if uri is None:
                continue
            path = local_path(uri)  # the reading side's rule: file:////x is /x, a::b.png a file
            if path is None:
                self.remote.add(uri)
                continue
            try:
                self._add_local(path, folders)
            except (OSError, ValueError):  # a path this system cannot even name: never a target
                continue

    def _add_local(self, path: str, folders: dict[str, str]) -> None:
        path = os.path.abspath(path)
        folder, base = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        self.local.add(os.path.join(folders[folder], base))
        if os.path.islink(path):
            self.local.add(os.path.realpath(path))
        self._local_paths.append(path)

    def is_local_source(self, real_path: str, identity: tuple[int, int] | None) -> bool:
        """Whether a local target (its real path; its device and inode if it exists) is a source."""
        if real_path in self.local:
            return True
        if identity is None:
            return False
        if self._identities is None:
            self._identities = set()
            for path in self._local_paths:
                try:
                    st = os.stat(path)
                except (OSError, ValueError):
                    continue
                self._identities.add((st.st_dev, st.st_ino))
        return identity in self._identities


_Sources = Sources  # the name before issue 12
