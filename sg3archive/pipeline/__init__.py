"""The archive pipeline: what the CLI and the Prefect flows run (library code, no Prefect).

Modules, each named for what it does:

* :mod:`~sg3archive.pipeline.jobs`: the job models (``CompressJob``, ``RestoreJob``, ``AuditJob``),
  manifests and their versions; :mod:`~sg3archive.pipeline.strict_yaml` reads manifests strictly.
* :mod:`~sg3archive.pipeline.session`: ``ArchiveSession`` — one archive opened once with its
  generator, encoder and codec (one bounded process cache), fingerprints checked at open.
* :mod:`~sg3archive.pipeline.plans`: shard plans under the archive's ``_plans/`` (with the skip set
  computed once per run); :mod:`~sg3archive.pipeline.calibrate`: fitting a new archive's codec;
  :mod:`~sg3archive.pipeline.encode`: the one encode (+ refinement) → code → measure step;
  :mod:`~sg3archive.pipeline.compress`: prepare, compress one shard, compress a job.
* :mod:`~sg3archive.pipeline.restore` (a package): selection, names, targets, source protection,
  output encoding, the restore run and its report.
* :mod:`~sg3archive.pipeline.inspect`: counts, shards and rows of an archive.

The names below are the public ones (the flows import only these); they are resolved on first use.
``compress_images`` and ``restore_images`` are ``compress.compress`` and ``restore.restore``: here the
names ``compress`` and ``restore`` are the modules themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sg3archive.lazy import lazy_exports

__all__ = [
    "ArchiveSession", "AuditJob", "AuditThresholds", "BadRow", "CompressJob", "CompressReport", "InspectReport",
    "JOB_VERSION", "JobError", "RestoreIncompleteError", "RestoreJob", "RestorePlan", "RestoreReport", "ShardPlan",
    "ShardReport", "compress_images", "compress_shard", "incomplete_cause", "incomplete_text", "inspect_archive",
    "inspect_report", "load_job", "make_job", "new_run_id", "not_restored_text", "plan_restore", "plan_shards",
    "prepare", "remove_plans", "resolve_job", "restore_images",
]
_EXPORTS = {
    **dict.fromkeys(["JOB_VERSION", "AuditJob", "AuditThresholds", "CompressJob", "JobError", "RestoreJob",
                     "load_job", "make_job", "resolve_job"], ".jobs"),
    "ArchiveSession": ".session",
    **dict.fromkeys(["CompressReport", "ShardReport", "compress_images", "compress_shard", "prepare"], ".compress"),
    **dict.fromkeys(["ShardPlan", "new_run_id", "plan_shards", "remove_plans"], ".plans"),
    **dict.fromkeys(["BadRow", "RestoreIncompleteError", "RestorePlan", "RestoreReport", "incomplete_cause",
                     "incomplete_text", "not_restored_text", "plan_restore", "restore_images"], ".restore"),
    **dict.fromkeys(["InspectReport", "inspect_archive", "inspect_report"], ".inspect"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from sg3archive.pipeline.compress import CompressReport, ShardReport, compress_images, compress_shard, prepare
    from sg3archive.pipeline.inspect import InspectReport, inspect_archive, inspect_report
    from sg3archive.pipeline.jobs import (
        JOB_VERSION,
        AuditJob,
        AuditThresholds,
        CompressJob,
        JobError,
        RestoreJob,
        load_job,
        make_job,
        resolve_job,
    )
    from sg3archive.pipeline.plans import ShardPlan, new_run_id, plan_shards, remove_plans
    from sg3archive.pipeline.restore import (
        BadRow,
        RestoreIncompleteError,
        RestorePlan,
        RestoreReport,
        incomplete_cause,
        incomplete_text,
        not_restored_text,
        plan_restore,
        restore_images,
    )
    from sg3archive.pipeline.session import ArchiveSession
