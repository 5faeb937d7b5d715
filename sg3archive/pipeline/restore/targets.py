"""Where files go: DEST as a place to write, local (:class:`LocalTargets`) or an fsspec bucket
prefix (:class:`RemoteTargets`), and :func:`open_targets`, which picks one.

Archives are untrusted input. Under a local DEST nothing is written through a symbolic link inside
DEST, each target's real path must lie under DEST's real path, and no target may be a file the
archive records as a source (not even with ``overwrite``): see ``sg3archive.pipeline.destination``.
Under a bucket DEST containment is checked on the object path and names must be UTF-8. Each
target's path is computed in one place per kind (``LocalTargets._check`` and
``RemoteTargets.path``); ``exists``, ``write`` and ``url`` all go through it.
"""

from __future__ import annotations

import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sg3archive.atomic import write_bytes
from sg3archive.pipeline.destination import (
    LocalDestination,
    UnsafeTargetError,
    destination_error,
    is_within,
    resolved_target,
)
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore.sources import Sources
from sg3archive.store.archive import ArchiveStore
from sg3archive.text import printable

__all__ = ["LocalTargets", "RemoteTargets", "Targets", "open_targets"]


class LocalTargets:
    """Targets under a local DEST: contained, never through a link, never a source."""

    def __init__(self, destination: LocalDestination, sources: Sources) -> None:
        self.dest = destination
        self.label = destination.label
        self.sources = sources
        self.warnings = sources.warnings

    def exists(self, relative: str) -> bool:
        """Whether the target exists; raises UnsafeTargetError for a target that leaves DEST (by
        its real path), goes through a link or a file inside DEST, or is an archived source."""
        parts = relative.split("/")
        resolved = resolved_target(self.dest.real, parts)
        if not is_within(resolved, self.dest.real):
            raise UnsafeTargetError(f"{relative!r} would be written at {resolved}, outside DEST {self.dest.label} "
                                    "(a link inside DEST points out of it); remove the link or choose another DEST")
        real = self.dest.real_path(relative)
        identity = self.dest.identity(relative)  # None: nothing there
        if self.sources.is_local_source(real, identity) or resolved in self.sources.local:
            raise UnsafeTargetError(f"its output {real} is a source file the archive records; restore never "
                                    "writes over a source (not even with --overwrite): choose another DEST")
        return identity is not None

    def write(self, relative: str, data: bytes, overwrite: bool) -> bool:
        return self.dest.write(relative, data, overwrite)

    def url(self, relative: str) -> str:
        return LocalFileSystem().unstrip_protocol(self.dest.real_path(relative))


class RemoteTargets:
    """Targets under an fsspec DEST (a bucket prefix): string-level containment, UTF-8 names,
    never a recorded source URL; each object appears whole (``sg3archive.atomic.write_bytes``)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, label: str, sources: Sources) -> None:
        self.fs, self.root, self.label = fs, root.rstrip("/"), label
        self.warnings = sources.warnings
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.sources = {fs._strip_protocol(u) for u in sources.remote if u.split("://", 1)[0] in protocols}

    def path(self, relative: str) -> str:
        try:
            relative.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeTargetError(f"its name {printable(relative)!r} is not valid UTF-8, which a {self.label} object "
                                    "name must be; restore it into a local DEST") from None
        path = posixpath.normpath(posixpath.join(self.root, relative))
        if not is_within(path, self.root) or path == self.root:
            raise UnsafeTargetError(f"{relative!r} would leave DEST {self.label}")
        if path in self.sources:
            raise UnsafeTargetError(f"its output {self.fs.unstrip_protocol(path)} is a source the archive records; "
                                    "restore never writes over a source (not even with --overwrite): choose another DEST")
        return path

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def write(self, relative: str, data: bytes, overwrite: bool) -> bool:
        """Write the object whole (``sg3archive.atomic.write_bytes``); False when it is there and
        ``overwrite`` is off."""
        target = self.path(relative)
        if not overwrite and self.fs.exists(target):
            return False
        try:
            self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
            write_bytes(self.fs, target, data)
        except OSError as exc:
            raise destination_error(self.label, exc) or exc from None
        return True

    def url(self, relative: str) -> str:
        return self.fs.unstrip_protocol(self.path(relative))


Targets = LocalTargets | RemoteTargets


def open_targets(job: RestoreJob, fs: fsspec.AbstractFileSystem, root: str, store: ArchiveStore) -> Targets:
    """DEST (``fs`` and ``root``, from ``job.destination``; made if missing) as a place to write,
    with the archive's sources it must not touch."""
    sources = Sources(store)
    if isinstance(fs, LocalFileSystem):
        local = LocalDestination(root, label=job.destination)
        local.prepare()
        return LocalTargets(local, sources)
    try:
        fs.makedirs(root, exist_ok=True)
    except OSError as exc:
        raise destination_error(job.destination, exc) or exc from None
    return RemoteTargets(fs, root, job.destination, sources)


_LocalTargets, _RemoteTargets = LocalTargets, RemoteTargets  # the names before issue 12
