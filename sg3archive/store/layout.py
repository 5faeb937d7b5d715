"""The names of everything under an archive's root: the one home of the archive's layout.

::

    archive.json                      archive-level settings; names the codec folder ("codec" key)
    _manifest/<generation>.json       manifest generations (sg3archive.store.manifest)
    shards/<kind>-<name>.parquet     Parquet shards (sg3archive.store.archive); <name>: <run>-<plan index> (compress) or a uuid4
    codec/<sha256>/                   the codec model, content-addressed (archives before: codec/ itself)
    _plans/<run>/<index>.jsonl        a compress run's plan files, removed when the run completes
    _audit/<time>-<id>.parquet        audit history records (sg3archive.audit.history)

docs/FORMAT.md says who writes, reads and removes each one. Names starting with
:data:`TEMP_PREFIX` are temporary siblings of interrupted writes; readers skip them.
"""

from __future__ import annotations

import re

from sg3archive.atomic import TEMP_PREFIX

__all__ = ["ARCHIVE_FILE", "MANIFEST_DIR", "SHARDS_DIR", "CODEC_DIR", "PLANS_DIR", "AUDIT_DIR", "TEMP_PREFIX",
           "CODEC_KEY", "PLAN_FORMAT", "codec_folder", "check_codec_folder", "plans_folder", "is_run_id"]

ARCHIVE_FILE = "archive.json"
MANIFEST_DIR = "_manifest"
SHARDS_DIR = "shards"
CODEC_DIR = "codec"
PLANS_DIR = "_plans"
AUDIT_DIR = "_audit"

# archive.json's key naming the codec folder, relative to the root: "codec/<sha256 hex>".
# Archives written before it existed have no such key; their codec is codec/ itself.
CODEC_KEY = "codec"
# The plan line format compress writes (docs/FORMAT.md, "Plans"); 1: a JSON string per line.
PLAN_FORMAT = 2

_CODEC_FOLDER = re.compile(rf"{CODEC_DIR}/[0-9a-f]{{64}}")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def codec_folder(codec_hash: str) -> str:
    """The content-addressed folder (relative to the root) of the codec whose hash is ``codec_hash``."""
    folder = f"{CODEC_DIR}/{codec_hash}"
    if not _CODEC_FOLDER.fullmatch(folder):
        raise ValueError(f"codec hash {codec_hash!r} is not 64 lowercase hex digits")
    return folder


def check_codec_folder(value: object) -> str:
    """``archive.json``'s codec entry, checked: ``codec/<64 hex>`` exactly, so no value read from
    an archive can point outside its codec folder (ValueError otherwise)."""
    if not isinstance(value, str) or not _CODEC_FOLDER.fullmatch(value):
        raise ValueError(f"its {CODEC_KEY!r} entry {str(value)[:80]!r} is not {CODEC_DIR}/<64 hex digits>")
    return value


def is_run_id(run_id: str) -> bool:
    """Whether ``run_id`` can name a run's plan folder: a plain name of letters, digits, ``._-``."""
    return bool(_RUN_ID.fullmatch(run_id)) and run_id not in (".", "..")


def plans_folder(run_id: str) -> str:
    """The plan folder (relative to the root) of compress run ``run_id``."""
    if not is_run_id(run_id):
        raise ValueError(f"run id {run_id!r} is not a plain name (letters, digits, '.', '_', '-')")
    return f"{PLANS_DIR}/{run_id}"
