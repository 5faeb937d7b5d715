"""What a restore tells its caller: the skipped rows (:class:`BadRow`), the run's result
(:class:`RestoreReport`, once ``RestoreSummary``), the lines that describe an incomplete run, and
the errors a restore raises. The CLI and the flow word their output from these, so a run reads the
same whichever started it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sg3archive.errors import Sg3ArchiveError
from sg3archive.quality.contract import REPRESENTATIONS
from sg3archive.text import printable

__all__ = ["BadRow", "RestoreIncompleteError", "RestoreReport", "RestoreSummary", "RowNotWritableError",
           "incomplete_cause", "incomplete_text", "merged_representations", "not_restored_text", "refusal",
           "representation_counts", "shard_refused", "shown"]


class RestoreIncompleteError(Sg3ArchiveError):
    """Some selected rows could not be restored (each is listed in the report); the rest were."""


class RowNotWritableError(Sg3ArchiveError):
    """One row's image cannot be made or written here (too large for the output format or this
    machine's memory, a name the destination cannot hold): not damage in the archive."""


@dataclass(frozen=True)
class BadRow:
    """A selected row that was skipped, and why."""

    id: str
    name: str
    reason: str
    unwritable: bool = False  # the archive is fine; the image cannot be made or written here

    def text(self) -> str:
        """One printable line (control characters and names from non-UTF-8 file names shown with
        escapes); a refused shard's entry (no id, no name) is its reason alone."""
        if self.is_shard:
            return printable(self.reason)
        return printable(f"{self.id}  {self.name}: {self.reason}")

    @property
    def is_shard(self) -> bool:
        """Whether this entry stands for a whole refused shard rather than one row."""
        return not self.id and not self.name


def shard_refused(shard: str, why: str) -> BadRow:
    """The bad entry for a shard the store refused to read."""
    return BadRow("", "", f"shard {shard} refused: {why}")


def refusal(exc: BaseException) -> str:
    """Why a shard was refused, in a few words (a ``ShardRefusedError``'s own, or the message)."""
    why = getattr(exc, "why", None)
    return why if isinstance(why, str) else str(exc)


def shown(value: Any, fallback: str) -> str:
    """A row's id or name as a bad entry shows it (``fallback`` when the row lacks it)."""
    return value if isinstance(value, str) and value else fallback


def _shards(bad: Sequence[BadRow]) -> int:
    return sum(1 for b in bad if b.is_shard)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n > 1 else ''}"


def incomplete_text(bad: Sequence[BadRow]) -> str:
    """The start of the error a restore with bad entries ends with: how many selected images
    could not be restored, and how many shards were refused."""
    shards = _shards(bad)
    rows = f"{len(bad) - shards} of the selected images could not be restored"
    if not shards:
        return rows
    refused = f"{_plural(shards, 'shard')} of the archive {'were' if shards > 1 else 'was'} refused"
    return f"{rows} and {refused}" if len(bad) > shards else refused


def incomplete_cause(bad: Sequence[BadRow]) -> str:
    """Why a restore with bad entries is incomplete, for its final error line: rows that could
    not be written here (too large, a name too long) counted apart from archive damage, which
    alone points to ``sg3archive audit``."""
    unwritable = sum(1 for b in bad if b.unwritable)
    parts = []
    if unwritable:
        parts.append(f"{_plural(unwritable, 'row')} could not be written (see above)")
    if len(bad) > unwritable:
        parts.append("the archive has damaged rows or shards, or unsafe names")
    return " and ".join(parts)


def not_restored_text(bad: Sequence[BadRow]) -> str:
    """How many rows (and refused shards) could not be restored, for a summary line ("" if none)."""
    shards = _shards(bad)
    text = f", {len(bad) - shards} could not be restored" if len(bad) > shards else ""
    if shards:
        text += f", {_plural(shards, 'shard')} refused (not restored)"
    return text


def representation_counts(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """``(representation, files)`` pairs in the order of
    :data:`~sg3archive.quality.contract.REPRESENTATIONS` (others after, by name), none at zero."""
    order = {name: i for i, name in enumerate(REPRESENTATIONS)}
    return tuple((k, v) for k, v in sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
                 if v)


def merged_representations(reports: Iterable[RestoreReport]) -> tuple[tuple[str, int], ...]:
    """The files written per representation by several reports together (a flow's shard tasks)."""
    total: dict[str, int] = {}
    for report in reports:
        for name, count in report.representations:
            total[name] = total.get(name, 0) + count
    return representation_counts(total)


def representations_text(counts: Sequence[tuple[str, int]]) -> str:
    """How the files written are split by representation, for a summary line ("" if none):
    ``2 latent, 1 classical``."""
    return ", ".join(f"{count} {name}" for name, count in counts)


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did. ``written`` counts files actually written; ``skipped`` outputs that
    were already there; ``bad`` the rows skipped as damaged, unsafe or unwritable (and refused
    shards); ``warnings`` the archive's damage notes (a skipped manifest generation, a failures
    shard whose sources are unknown).

    ``representations`` counts the files written per representation (``latent``, ``classical``,
    ``original``; :func:`representation_counts` order, none at zero); :meth:`written_as` reads it.

    ``files`` holds the URL of every file written, one string per image: it grows with the run
    (a restore of millions of images keeps millions of URLs), so callers that restore very large
    selections should not rely on it; the flow drops it from each task's result.
    """

    destination: str
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    files: tuple[str, ...] = ()
    bad: tuple[BadRow, ...] = ()
    warnings: tuple[str, ...] = ()
    representations: tuple[tuple[str, int], ...] = ()

    def written_as(self, representation: str) -> int:
        """Files written from rows of ``representation`` (``latent``, ``classical``, ``original``)."""
        return dict(self.representations).get(representation, 0)

    def text(self) -> str:
        """The one-line summary: written (per representation), already there, not restored, speed."""
        split = f" ({representations_text(self.representations)})" if self.representations else ""
        text = f"{self.written} images restored to {self.destination}{split}, {self.skipped} already there"
        text += not_restored_text(self.bad)
        if self.written and self.seconds > 0:
            text += f"; {self.written / self.seconds:.2f} images/s"
        return printable(text)

    def bad_text(self) -> str:
        """The skipped rows, one per line: id, name and reason."""
        return "\n".join(f"not restored: {row.text()}" for row in self.bad)


RestoreSummary = RestoreReport  # the name before issue 12
