"""How the command line ends when something goes wrong: one line on stderr that says what was
wrong and what to do, and an exit status — never a traceback for anything a user can type.

``-v`` adds the traceback for the rare error we did not foresee (a bug to report).
"""

from __future__ import annotations

import errno
import traceback

import click

from sg3archive import settings
from sg3archive.errors import Sg3ArchiveError

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT

INTERRUPTED = "interrupted — rerun the same command to resume (work already committed is kept)"

_OS_HINTS = {
    errno.ENOSPC: "free some space on that disk (or choose another destination), then rerun the same command to resume",
    errno.EDQUOT: "your disk quota there is used up; free some space (or choose another destination), then rerun "
                  "the same command to resume",
    errno.EFBIG: "the file system refused a file that large (a file-size limit); choose another destination, then "
                 "rerun the same command to resume",
    errno.EROFS: "that file system is read-only; choose a writable destination",
    errno.EACCES: "you lack permission there; choose another path or fix its permissions",
    errno.EPERM: "you lack permission there; choose another path or fix its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder where a file was expected",
    errno.ENOENT: "check the path (and storage_options for a bucket)",
}


def describe(exc: BaseException) -> str:
    """The one-line message for ``exc`` (without the ``error:`` prefix)."""
    if isinstance(exc, Sg3ArchiveError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.strerror and exc.filename is not None:  # "[Errno 2] ..." reads like a traceback
            what = f"{exc.filename}: {exc.strerror.lower()}"
        else:
            what = str(exc) or type(exc).__name__
        hint = _OS_HINTS.get(exc.errno or 0)
        return f"{what}; {hint}" if hint and hint not in what else what
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller --batch-size (or a machine with more memory)"
    return (f"unexpected {type(exc).__name__}: {exc} — this is a bug in sg3archive; rerun with -v for "
            "the details and report it")


def fail(exc: BaseException, verbose: bool = False) -> int:
    """Print ``exc`` as one line on stderr (plus a traceback when ``verbose`` and it is not one of
    ours); return the exit status."""
    if isinstance(exc, (KeyboardInterrupt, click.Abort)):
        click.echo(f"\n{INTERRUPTED}", err=True)
        return EXIT_INTERRUPTED
    if verbose and not isinstance(exc, Sg3ArchiveError):
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    click.echo(f"error: {describe(exc)}", err=True)
    return EXIT_ERROR


def verbose_requested() -> bool:
    """Whether ``-v`` was given (read from click's context, or ``$SG3ARCHIVE_VERBOSE``)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    return bool((root.params.get("verbose") if root else False) or settings.verbose())
