"""Writing files under a local destination folder without ever leaving it.

Restore writes files named by archive rows, and archives are untrusted input. Under a local DEST
every write here:

* walks from DEST's real path one folder at a time, opening each folder with ``O_NOFOLLOW``
  relative to the one before (``dir_fd``): a symbolic link (or a file) where a folder is needed
  refuses the write, so no link inside DEST is ever followed, whatever it points to;
* creates its data in a temporary file made with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the target's
  folder, then puts it in place with ``link`` (exclusive: an existing target is never touched) or,
  to overwrite, ``rename`` (which replaces a directory entry — a symbolic link itself, never the
  file it points to), so a crash or a full disk leaves no partial file visible and the temporary
  file is removed;
* reports a full, read-only or unwritable DEST as one :class:`DestinationWriteError` line.

Names are ``str`` (``os`` functions encode them with the file system encoding and
surrogateescape), so names from non-UTF-8 file names come back byte for byte.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid

from sg3archive.errors import Sg3ArchiveError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOSYS, getattr(errno, "ENOTSUP", -1),
                  getattr(errno, "EOPNOTSUPP", -1)}

# errno → what it says about DEST (the whole restore stops: no later write could succeed)
DESTINATION_ERRNOS = {
    errno.ENOSPC: "is full (no space left on the device)",
    getattr(errno, "EDQUOT", -1): "is full (disk quota exceeded)",
    errno.EFBIG: "cannot take a file this large (file size limit)",
    errno.EROFS: "is read-only",
    errno.EACCES: "is not writable (permission denied)",
}


class UnsafeTargetError(Sg3ArchiveError):
    """A target would leave the destination, go through a symbolic link or a file inside it, or
    replace a file it must not (an archived source)."""


class DestinationWriteError(Sg3ArchiveError):
    """The destination cannot take more files (full, read-only, not writable)."""


def destination_error(destination: str, exc: OSError) -> DestinationWriteError | None:
    """The one-line error for an ``OSError`` that means DEST as a whole cannot be written
    (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ``EROFS``, ``EACCES``), or None for any other error."""
    what = DESTINATION_ERRNOS.get(exc.errno or 0)
    if what is None:
        return None
    return DestinationWriteError(
        f"DEST {destination} {what}; free space or choose another DEST (or fix its permissions), then rerun "
        "the same command: images already written are kept and skipped")


def is_within(path: str, folder: str) -> bool:
    """Whether the normalized ``path`` is ``folder`` or lies under it (string comparison; POSIX
    separators for URLs, ``os.sep`` for local paths)."""
    sep = "/" if "/" in folder and os.sep not in folder else os.sep
    folder = folder.rstrip(sep) or sep
    return path == folder or path.startswith(folder if folder.endswith(sep) else folder + sep)


def resolved_target(root_real: str, parts: list[str]) -> str:
    """Where ``parts`` under the real path ``root_real`` would land if links were followed: the
    real path of its deepest existing folder (``os.path.realpath``), then the parts that do not
    exist yet and the file name (a link there is replaced, never followed, so it is not resolved)."""
    head, rest = os.path.join(root_real, *parts[:-1]), [parts[-1]]
    while not os.path.lexists(head) and head != os.path.dirname(head):
        head, tail = os.path.split(head)
        rest.insert(0, tail)
    return os.path.join(os.path.realpath(head), *rest)


class LocalDestination:
    """A local folder that restored files are written under (see the module docstring)."""

    def __init__(self, root: str, label: str | None = None) -> None:
        """``root``: the folder (made if missing by :meth:`prepare`); ``label``: how messages
        name it (the user's DEST)."""
        self.root = root
        self.label = label or root
        self.real = os.path.realpath(root)

    def prepare(self) -> None:
        """Make DEST (and its parents) if missing; a full or read-only disk is one clear error."""
        try:
            os.makedirs(self.real, exist_ok=True)
        except OSError as exc:
            raise destination_error(self.label, exc) or exc from None
        self.real = os.path.realpath(self.root)

    def real_path(self, relative: str) -> str:
        """The real path a relative output name is written at (no link inside DEST is followed)."""
        return os.path.join(self.real, *self._parts(relative))

    def exists(self, relative: str) -> bool:
        """Whether something (a file, link or folder) is at ``relative``; raises
        :class:`UnsafeTargetError` when a folder on the way is a link or a file."""
        return self.identity(relative) is not None

    def identity(self, relative: str) -> tuple[int, int] | None:
        """``(st_dev, st_ino)`` of what is at ``relative`` (links not followed), or None when
        nothing is; raises :class:`UnsafeTargetError` when a folder on the way is a link or a file."""
        parts = self._parts(relative)
        fd = self._open_folder(parts[:-1], create=False)
        if fd is None:
            return None
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
            return st.st_dev, st.st_ino
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def write(self, relative: str, data: bytes, overwrite: bool = False) -> bool:
        """Write ``data`` at ``relative``; False (nothing written) when something is already there
        and ``overwrite`` is off. With ``overwrite`` an existing file or link is replaced (a link
        itself, not its target); a folder there is refused.

        Raises:
            UnsafeTargetError: a folder on the way is a link or a file; a folder is at the target.
            DestinationWriteError: DEST is full, read-only or not writable (nothing half-written
                stays behind).
            OSError: any other failure of this one file (a name too long, ...).
        """
        parts = self._parts(relative)
        try:
            fd = self._open_folder(parts[:-1], create=True)
            assert fd is not None
            try:
                return self._write_in(fd, parts[-1], data, overwrite)
            finally:
                os.close(fd)
        except OSError as exc:
            raise destination_error(self.label, exc) or exc from None

    # -- internals ------------------------------------------------------------------------------
    def _parts(self, relative: str) -> list[str]:
        parts = relative.split("/")
        if not parts or any(p in ("", ".", "..") or "\x00" in p or os.sep in p for p in parts):
            raise UnsafeTargetError(f"{relative!r} is not a plain relative name inside DEST {self.label}")
        return parts

    def _open_folder(self, folders: list[str], create: bool) -> int | None:
        """A descriptor of DEST/``folders`` reached without following any link (None when missing
        and not ``create``)."""
        fd = os.open(self.real, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            for depth, name in enumerate(folders):
                if create:
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if create:
                        raise
                    os.close(fd)
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(folders[: depth + 1])
                    kind = "a symbolic link" if _is_link(fd, name) else "a file"
                    raise UnsafeTargetError(f"{where} inside DEST {self.label} is {kind}, not a folder; restore "
                                            "never follows links inside DEST: remove it or choose another DEST") from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _write_in(self, folder: int, name: str, data: bytes, overwrite: bool) -> bool:
        try:
            current = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and stat.S_ISDIR(current.st_mode):
            raise UnsafeTargetError(f"{name!r} in DEST {self.label} is a folder where an image goes; move it away")
        if current is not None and not overwrite:
            return False
        tmp = f".sg3archive-{uuid.uuid4().hex[:16]}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o666, dir_fd=folder)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)  # replaces a link, not its target
                return True
            return self._link_exclusive(folder, tmp, name)
        finally:
            try:
                os.unlink(tmp, dir_fd=folder)
            except OSError:  # already renamed into place (or the disk is gone: nothing more to do)
                pass

    @staticmethod
    def _link_exclusive(folder: int, tmp: str, name: str) -> bool:
        """Give the temporary file its final name only if nothing has it (False if something does)."""
        try:
            os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
        # a file system without hard links: rename, after checking nothing is there
        try:
            os.stat(name, dir_fd=folder, follow_symlinks=False)
            return False
        except FileNotFoundError:
            os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            return True


def _is_link(folder: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return False
