"""Selection: which rows a restore job asks for (``--ids``, ``--glob``, ``--shard``) and what
each is written as, found from the id and name columns only (:func:`plan_restore` builds a
:class:`RestorePlan`). The naming rule depends on the archive only, not on the selection, so
partial restores and full ones agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import pyarrow as pa

from sg3archive.errors import Sg3ArchiveError
from sg3archive.pipeline.jobs import RestoreJob
from sg3archive.pipeline.restore.names import Names, output_name
from sg3archive.pipeline.restore.report import BadRow, refusal, shard_refused
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.format import ArchiveFormatError

__all__ = ["NAME_COLUMNS", "SHARD_REFUSED", "RestorePlan", "plan_restore", "row_missing", "selector",
           "uris_and_names"]

NAME_COLUMNS = ["id", "source_uri", "source_name", "source_uri_bytes"]  # exact names: format.exact_name
# What a shard the store refuses to read raises (a tampered footer, a null in a required column,
# a column of the wrong type, a shard file that is missing): that shard is reported, the others restore.
SHARD_REFUSED = (ArchiveFormatError, FileNotFoundError, pa.ArrowInvalid, pa.ArrowTypeError,
                 pa.ArrowNotImplementedError)


@dataclass
class RestorePlan:
    """What a restore writes, found from the id and name columns only.

    Attributes:
        total: selected rows.
        shards: images shard name → selected rows in it, in commit order (shards without any are left out).
        renamed: shard name → row index in the shard → output name, for rows whose name was taken
            by an earlier row (every other selected row writes ``output_name(row_name(...))``).
        refused: shard name → row index in the shard → why no output name can be made for it
            (selected rows only; restore reports them as bad rows).
        refused_shards: shard name → why the store refused to read it (shards that may hold
            selected rows; none of their rows is written, restore reports one bad entry each).
    """

    total: int = 0
    shards: dict[str, int] = field(default_factory=dict)
    renamed: dict[str, dict[int, str]] = field(default_factory=dict)
    refused: dict[str, dict[int, str]] = field(default_factory=dict)
    refused_shards: dict[str, str] = field(default_factory=dict)

    def for_shard(self, shard: str) -> RestorePlan:
        """The part of the plan in one shard (a flow task's share)."""
        count = self.shards.get(shard, 0)
        return RestorePlan(total=count, shards={shard: count} if count else {},
                           renamed={shard: self.renamed[shard]} if shard in self.renamed else {},
                           refused={shard: self.refused[shard]} if shard in self.refused else {},
                           refused_shards={shard: self.refused_shards[shard]} if shard in self.refused_shards else {})

    def refused_shard_rows(self) -> list[BadRow]:
        """One bad entry per refused shard."""
        return [shard_refused(name, why) for name, why in self.refused_shards.items()]

    def output_for(self, shard: str, index: int, name: str, out_format: str) -> str:
        """The output name of a selected row (``index`` in its shard, ``name`` its row name): the
        name the plan gave it when an earlier row took its own, else ``output_name(name, out_format)``."""
        return self.renamed.get(shard, {}).get(index) or output_name(name, out_format)


def uris_and_names(cols: dict[str, list[Any]]) -> Iterator[tuple[str | None, str | None]]:
    """Each row's exact source URI and name (``surrogateescape`` strs for names that are not
    UTF-8: ``format.exact_uri``/``exact_name`` read them from ``source_uri_bytes``); None for
    one that a damaged row lacks (a null where the schema requires a value)."""
    raws = cols.get("source_uri_bytes") or [None] * len(cols["source_uri"])
    names = cols.get("source_name") or [None] * len(cols["source_uri"])
    for uri, name, raw in zip(cols["source_uri"], names, raws):
        row = {"source_uri": uri, "source_name": name, "source_uri_bytes": raw}
        try:
            exact = fmt.exact_uri(row)
        except (TypeError, ValueError, AttributeError):
            exact = None
        if not isinstance(exact, str):
            yield None, name if isinstance(name, str) and name else None
            continue
        try:
            exact_name = fmt.exact_name(row)
        except (TypeError, ValueError, AttributeError):
            exact_name = None
        yield exact, exact_name if isinstance(exact_name, str) else None


def row_missing(rid: Any, uri: str | None, name: str | None) -> str | None:
    """Why a row has no usable id or name (a null or a value of the wrong type where the schema
    requires a string), or None when it has both."""
    missing = [what for what, value in (("id", rid), ("source_uri", uri), ("name", name))
               if not isinstance(value, str) or not value]
    if not missing:
        return None
    return f"its {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing (the archive is damaged)"


def selector(job: RestoreJob) -> Callable[[Any, str | None, str | None], bool]:
    ids = set(job.ids or ())
    glob = job.glob
    name_glob = glob.removeprefix("./") if glob else ""

    def selected(rid: Any, uri: str | None, name: str | None) -> bool:
        if uri is None or name is None or row_missing(rid, uri, name):  # cannot be matched: part of a whole (or whole-shard) restore only
            return not ids and not glob
        if ids and rid not in ids:
            return False
        return not glob or fnmatchcase(name, name_glob) or fnmatchcase(uri, glob)

    return selected


def _listing_hint(archive: str) -> str:
    return f"`sg3archive inspect {archive} --rows` lists ids and names"


def plan_restore(job: RestoreJob, store: ArchiveStore | None = None) -> RestorePlan:
    """Select the rows ``job`` asks for and name their outputs, reading only the id and name
    columns (of every images shard: names taken by rows outside the selection count too; memory:
    one short name per row, nothing per pixel). A selected row whose name would leave the
    destination, or that lacks its id or name, is put in ``refused``; a shard the store refuses
    to read in ``refused_shards`` (restore reports them and restores the others).

    Raises:
        Sg3ArchiveError: an unknown shard, ids not in the archive, or a selection that matches
            nothing (neither when a shard was refused: those rows may be in it).
    """
    store = store or ArchiveStore.open(job.archive, storage_options=job.storage_options)
    records = store.shards("images")
    if job.shard and job.shard not in {r.name for r in records}:
        raise Sg3ArchiveError(f"{job.shard!r} is not an images shard of {job.archive}; "
                              f"`sg3archive inspect {job.archive} --shards` lists them")
    selected = selector(job)
    wanted, found = set(job.ids or ()), set()
    names = Names()
    plan = RestorePlan()
    for record in records:
        index, seen = 0, set()
        try:
            for batch in store.iter_batches("images", columns=NAME_COLUMNS, shard_names=[record.name]):
                cols = batch.to_pydict()
                for rid, (uri, name) in zip(cols["id"], uris_and_names(cols)):
                    chosen = selected(rid, uri, name) and (not job.shard or record.name == job.shard)
                    if rid in wanted:
                        seen.add(rid)
                    if chosen:
                        plan.total += 1
                        plan.shards[record.name] = plan.shards.get(record.name, 0) + 1
                    problem = row_missing(rid, uri, name)
                    try:
                        if problem or name is None:
                            raise Sg3ArchiveError(problem or "its name is missing")
                        out = output_name(name, job.format)
                    except Sg3ArchiveError as exc:
                        if chosen:  # never written, so it takes no name
                            plan.refused.setdefault(record.name, {})[index] = str(exc)
                        index += 1
                        continue
                    final = names.claim(out, rid)
                    if chosen and final != out:
                        plan.renamed.setdefault(record.name, {})[index] = final
                    index += 1
        except SHARD_REFUSED as exc:  # none of its rows is written (names its first rows took stay taken)
            if not job.shard or record.name == job.shard:
                plan.refused_shards[record.name] = refusal(exc)
            _drop_shard(plan, record.name)
        else:
            found |= seen
    missing = sorted(wanted - found)
    if job.ids and not missing:  # every asked id was found: a refused shard holds none of the selection
        plan.refused_shards.clear()
    if plan.refused_shards:  # the ids or matches may be in a refused shard: reported there, not here
        return plan
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise Sg3ArchiveError(f"{len(missing)} of the --ids are not in {job.archive}: {shown}; "
                              f"{_listing_hint(job.archive)}")
    if not plan.total and (job.ids or job.glob or job.shard):
        what = " with ".join(s for s in (f"--glob {job.glob!r}" if job.glob else "",
                                         f"--ids ({len(wanted)})" if job.ids else "",
                                         f"--shard {job.shard}" if job.shard else "") if s)
        hint = (" (--glob matches names relative to the compressed folder, e.g. 'more/*.png', or full source URIs)"
                if job.glob else "")
        raise Sg3ArchiveError(f"{what} matches no image of {job.archive}{hint}; {_listing_hint(job.archive)}")
    return plan


def _drop_shard(plan: RestorePlan, shard: str) -> None:
    """Take a refused shard's rows out of what a plan writes (its names stay taken)."""
    plan.total -= plan.shards.pop(shard, 0)
    plan.renamed.pop(shard, None)
    plan.refused.pop(shard, None)
