"""Plan files: the units of work of a compress run, and what each one needs to resume.

A run lists its source once and writes the listing into plan files of ``shard_size`` URIs under
the archive's ``_plans/<run>/`` folder (one file per shard task). The archive's committed keys
are read ONCE, at planning time, and each plan line carries, for its URI, the entries already
committed for it; a shard task then reads its own plan and nothing else of the archive's rows, so
the cost of resuming one task does not grow with the number of committed shards.

Plan line (format :data:`~sg3archive.store.layout.PLAN_FORMAT` = 2, ``.jsonl``; the store's
layout owns ``_plans/`` and its format number, docs/FORMAT.md documents it): a JSON object, ASCII-only (``\\n``, ``\\u2028`` and the lone
surrogates of names that are not UTF-8 all escaped, so every line break is a separator)::

    {"uri": "<exact source URI>", "done": [["<sha256 or null>", "<settings_key>", "images|failures"], ...]}

Still read: lines that are a plain JSON string (the URI alone: format 1) and the one-URI-per-line
``.txt`` plans of earlier versions; for those the committed keys are not known from the plan and
the task reads them from the archive as before (:attr:`PlanEntry.done` is ``None``).
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from sg3archive.errors import Sg3ArchiveError
from sg3archive.images import iter_sources
from sg3archive.pipeline.jobs import CompressJob
from sg3archive.store import format as fmt
from sg3archive.store.archive import ArchiveStore
from sg3archive.store.bounded import own_folder
from sg3archive.store.layout import PLAN_FORMAT, PLANS_DIR, is_run_id
from sg3archive.store.layout import plans_folder as plans_path

__all__ = [
    "PLANS_DIR", "PLAN_FORMAT", "PLAN_SUFFIX", "DoneEntry", "ExactKey", "PlanEntry", "ShardPlan", "committed_exact_keys",
    "done_by_uri", "new_run_id", "parse_plan", "parse_plan_entries", "plan_shards", "plan_text", "read_plan",
    "remove_plans", "run_id_of", "shard_name",
]

PLAN_SUFFIX = ".jsonl"

ExactKey = tuple[str, str | None, str]  # (exact source URI, source_sha256, settings_key)
DoneEntry = tuple[str | None, str, str]  # (source_sha256, settings_key, table kind) of one committed row


@dataclass(frozen=True)
class ShardPlan:
    """One unit of work: the URIs listed in ``path`` (a plan file in the archive, see the module
    docstring), ``count`` of them, shard number ``index`` of its run (the run: the plan's folder,
    :func:`run_id_of`; together they name the task's shards, :func:`shard_name`)."""

    index: int
    path: str
    count: int


@dataclass(frozen=True)
class PlanEntry:
    """One plan line: a source URI and what the archive held for it when the run was planned
    (``None``: not recorded in the plan, a plan of an earlier version)."""

    uri: str
    done: tuple[DoneEntry, ...] | None = None

    def to_line(self) -> str:
        doc: Any = self.uri if self.done is None else {"uri": self.uri, "done": [list(d) for d in self.done]}
        return json.dumps(doc, ensure_ascii=True) + "\n"


def new_run_id() -> str:
    """A run's name under ``_plans/``: the UTC time to the microsecond (sorts by start)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def plan_text(uris: Iterable[str | PlanEntry]) -> str:
    """A plan file's text: one line per URI (a plain URI is written as a format-1 line, a
    :class:`PlanEntry` with its committed entries as a format-2 line)."""
    return "".join((u if isinstance(u, PlanEntry) else PlanEntry(u)).to_line() for u in uris)


def _entry(doc: Any) -> PlanEntry | None:
    if isinstance(doc, str):
        return PlanEntry(doc)
    if not isinstance(doc, dict) or not isinstance(doc.get("uri"), str) or not isinstance(doc.get("done"), list):
        return None
    done = []
    for item in doc["done"]:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], (str, type(None)))
                and isinstance(item[1], str) and item[2] in fmt.KINDS):
            return None
        done.append((item[0], item[1], item[2]))
    return PlanEntry(doc["uri"], tuple(done))


def parse_plan_entries(text: str, legacy: bool = False) -> list[PlanEntry]:
    """The entries of a plan file's text (:func:`plan_text`); ``legacy``: the one-URI-per-line
    ``.txt`` plans of earlier versions."""
    if legacy:
        return [PlanEntry(line) for line in text.splitlines() if line]
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line:
            continue
        try:
            entry = _entry(json.loads(line))
        except ValueError:
            entry = None
        if entry is None:
            raise Sg3ArchiveError(f"plan line {number} is neither a JSON string nor a plan entry; delete the "
                                  "_plans folder and re-run")
        entries.append(entry)
    return entries


def parse_plan(text: str, legacy: bool = False) -> list[str]:
    """The URIs of a plan file's text (:func:`parse_plan_entries` without the committed entries)."""
    return [entry.uri for entry in parse_plan_entries(text, legacy)]


def read_plan(plan: ShardPlan, storage_options: dict[str, Any] | None = None) -> list[PlanEntry]:
    """The entries of one plan file (the only thing of the archive a shard task reads to resume)."""
    with fsspec.open(plan.path, "r", encoding="utf-8", **(storage_options or {})) as f:
        return parse_plan_entries(f.read(), legacy=not plan.path.endswith(PLAN_SUFFIX))


def committed_exact_keys(store: ArchiveStore) -> dict[str, set[ExactKey]]:
    """``(exact source_uri, source_sha256, settings_key)`` of the committed rows, by table kind,
    read in one pass (:meth:`ArchiveStore.committed_exact_keys`; names that are not UTF-8 compare
    exactly). Read once per run, by :func:`plan_shards`."""
    return store.committed_exact_keys()


def done_by_uri(keys: dict[str, set[ExactKey]]) -> dict[str, list[DoneEntry]]:
    """The committed keys grouped by exact source URI: what each plan line carries."""
    out: dict[str, list[DoneEntry]] = defaultdict(list)
    for kind in sorted(keys):
        for uri, sha, key in keys[kind]:
            out[uri].append((sha, key, kind))
    for entries in out.values():
        entries.sort(key=lambda d: (d[2], d[1], d[0] or ""))
    return out


def _plans_folder(job: CompressJob, run_id: str, store: ArchiveStore | None) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fs, path)`` of the run's plan folder ``_plans/<run>``, made the archive's own (no link
    out) before a plan is written in it (the store's folder; the same path before it exists)."""
    if store is not None:
        return store.fs, store.plans_folder(run_id)
    fs, root = fsspec.core.url_to_fs(job.destination, **job.storage_options)
    return fs, own_folder(fs, root, plans_path(run_id), job.destination)


def plan_shards(job: CompressJob, run_id: str | None = None, store: ArchiveStore | None = None) -> Iterator[ShardPlan]:
    """Stream the source listing into plan files of ``shard_size`` URIs under ``_plans/<run>/``;
    yields one small record per shard (the listing itself is never held in memory).

    The archive's committed keys are read once, here (``store``, or the archive at
    ``job.destination`` when it exists), and each line carries its URI's committed entries.
    """
    run_id = run_id or new_run_id()
    if store is None:
        try:
            store = ArchiveStore.open(job.destination, storage_options=job.storage_options)
        except fmt.ArchiveNotFoundError:
            store = None
    fs, folder = _plans_folder(job, run_id, store)
    done = done_by_uri(committed_exact_keys(store)) if store is not None else {}
    batch: list[PlanEntry] = []
    index = 0

    def flush() -> ShardPlan:
        path = posixpath.join(folder, f"{index:07d}{PLAN_SUFFIX}")
        with fs.open(path, "w", encoding="ascii") as f:
            f.write(plan_text(batch))
        return ShardPlan(index, fs.unstrip_protocol(path), len(batch))

    for uri in iter_sources(job.source, pattern=job.pattern, storage_options=job.source_storage_options or None):
        batch.append(PlanEntry(uri, tuple(done.get(uri, ()))))
        if len(batch) == job.shard_size:
            yield flush()
            index += 1
            batch = []
    if batch:
        yield flush()


def remove_plans(job: CompressJob, run_id: str) -> None:
    """Remove the run's plan folder (the run completed, failed sources included), and ``_plans``
    itself when no other run's plans are left in it (:meth:`ArchiveStore.remove_plans`)."""
    ArchiveStore.open(job.destination, storage_options=job.storage_options).remove_plans(run_id)


def run_id_of(plan: ShardPlan) -> str:
    """The run a plan belongs to (the name of its folder under ``_plans/``)."""
    return posixpath.basename(posixpath.dirname(plan.path))


def shard_name(plan: ShardPlan, kind: str) -> str:
    """The file name of the ``kind`` shard a plan's task writes: ``<kind>-<run>-<index:07d>.parquet``.

    Derived from the plan alone, so a retried task finds what its first try wrote (one ``exists``
    per kind) instead of archiving the plan again.
    """
    run = run_id_of(plan)
    if not is_run_id(run):
        raise Sg3ArchiveError(f"plan {plan.path} is not in a run folder {PLANS_DIR}/<run>/ (letters, digits, ._-); "
                              "re-run the compress to plan it again")
    return f"{kind}-{run}-{plan.index:07d}.parquet"
