"""Which sources the audit may read: only the archive's own, under the source roots recorded at
compress time (or the roots the audit job names), never an ``http(s)`` URL unless the job allows it.

An archive is untrusted input: a row's ``source_uri`` could name a cloud metadata endpoint or a
file outside anything that was ever compressed, and the audit would fetch it and record what it
found in the archive's history. :func:`allowed_source` decides before any request or read:

* the roots: those the audit job names (``source_roots``), when it names any — the operator's
  list is the real boundary, since an archive chooses its own recorded roots; otherwise the row's
  recorded ``source_root`` (rows of format version 1 have none: their sources are not read unless
  the job names roots);
* a source is under a root when scheme and bucket/host are the same and its path is the root's
  path or below it (for a URI-list or single-file root: below that file's folder); no ``.`` or
  ``..`` segment anywhere;
* on the local disk symlinks are resolved: the source's real path must lie under the root's real
  path, and it must be a regular file (never a FIFO or a device, which could block or never end);
* an allowlist of schemes, never a denylist (:func:`scheme_refusal`): a local path, ``file://`` or
  ``local://``; a single URL of an object store in :data:`OBJECT_STORE_SCHEMES`; ``http://`` and
  ``https://`` only when ``allow_http_sources`` is set. Anything else (ftp, sftp, memory, data:, an
  fsspec ``a::b`` chain such as ``simplecache::http://``) is refused by its scheme, never opened:
  each such filesystem would make its own requests. The same rule applies to the roots.

Reading an allowed source (:func:`read_source`) checks its recorded sha256 and decodes it at its
original size (:func:`sg3archive.images.decode_image`, the decoder compress used, under the same
pixel limit): every quality figure of the audit compares against these pixels. For a latent row it
is also fitted with :func:`sg3archive.images.load_fitted`, the same bytes → tensor path compress
used; the result must match the row's recorded fit (the square compress encoded), which the square
diagnostics compare against (:func:`reachable_source` returns that square alone, as before).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sg3archive.images import (
    DEFAULT_MAX_PIXELS,
    FitInfo,
    decode_image,
    load_fitted,
    local_path,
    read_bytes,
    sha256_hex,
)
from sg3archive.store import format as fmt
from sg3archive.store.format import source_root as full_url

LOCAL_SCHEMES = ("file", "local")
# The object stores the project supports as sources (s3fs, gcsfs, adlfs): one request per object,
# to the store the storage_options name. Nothing else that fsspec knows is read by the audit.
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl")
HTTP_SCHEMES = ("http", "https")
# A URL's scheme as written: one name, or an fsspec chain of names ("simplecache::http"), before
# "://", "::" or a bare ":" (data:...).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*(?:::[A-Za-z][A-Za-z0-9+.\-]*)*)(://|::|:)")
LIST_SUFFIXES = (".txt", ".lst")  # a compress SRC that is a URI list: its entries sit beside it


@dataclass(frozen=True)
class Location:
    """A URL split the way containment is judged: ``scheme`` ("file" for local paths), ``host``
    (bucket or host; "" locally) and ``path`` (no trailing slash)."""

    scheme: str
    host: str
    path: str

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s]


def scheme_refusal(url: str, allow_http: bool = False) -> str | None:
    """Why the audit must not open ``url`` because of its scheme (naming it), or None when the
    scheme is allowed: a local path, ``file://``/``local://``, one of :data:`OBJECT_STORE_SCHEMES`
    with no ``::`` anywhere, or http(s) with ``allow_http``. An allowlist: whatever fsspec (or a
    plugin) may add later stays refused."""
    if url.startswith("/"):
        return None  # a local absolute path; "::" in it is part of a file name
    match = _SCHEME.match(url)
    if match is None:
        return "it is not a URL the audit reads (no scheme, not an absolute local path)"
    scheme, sep = match.group(1), match.group(2)
    lower = scheme.lower()
    stores = ", ".join(f"{s}://" for s in OBJECT_STORE_SCHEMES)
    readable = f"local files, {stores} and, with allow_http_sources, http(s)://"
    if "::" in scheme or sep == "::":
        return (f"it is a chained fsspec URL (scheme {scheme}{sep}); the audit reads only single URLs "
                f"({readable})")
    if sep != "://":
        return f"its scheme {scheme}: is not one the audit reads ({readable})"
    if lower in LOCAL_SCHEMES:
        return None  # everything after "file://" is the path, whatever it holds
    if "::" in url:
        return f"this {lower}:// URL holds '::' (an fsspec chain); the audit reads only single URLs"
    if lower in OBJECT_STORE_SCHEMES:
        return None
    if lower in HTTP_SCHEMES:
        return None if allow_http else (f"it is an http(s) URL (scheme {lower}://); set allow_http_sources: true "
                                         "in the audit job to read such sources")
    return f"its scheme {lower}:// is not one the audit reads ({readable})"


def split_url(url: str) -> Location | None:
    """``url`` as a :class:`Location`, or None when it is no URL or path this check understands.
    Nothing is percent-decoded: sources are recorded as fsspec names them, literally. Says
    nothing about whether the scheme may be read (:func:`scheme_refusal`)."""
    scheme, sep, rest = url.partition("://")
    if not sep or url.startswith("/"):
        return Location("file", "", os.path.abspath(url).rstrip("/") or "/") if url.startswith("/") else None
    scheme = scheme.lower()
    if scheme in LOCAL_SCHEMES:
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            return None  # file://host/... : another machine's file
        return Location("file", "", rest.rstrip("/") or "/")
    host, _, path = rest.partition("/")
    return Location(scheme, host, "/" + path.rstrip("/"))


def job_roots(roots: list[str] | None, storage_options: dict | None = None) -> list[str]:
    """The audit job's ``source_roots`` as full URLs (a local path becomes ``file:///…``)."""
    out = []
    for root in roots or []:
        out.append(root if "://" in root else full_url(root, storage_options))
    return out


def _base(root: Location) -> Location:
    """Where sources of a URI-list ``root`` (``….txt``/``….lst``) may lie: the list's folder
    (its relative entries resolve there); any other root is its own base."""
    if root.path.lower().endswith(LIST_SUFFIXES):
        folder = root.path.rsplit("/", 1)[0] or "/"
        return Location(root.scheme, root.host, folder)
    return root


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


@dataclass(frozen=True)
class Decision:
    """``read``: what to read when allowed, exactly as checked (a local real path that
    :func:`~sg3archive.images.read_bytes` opens as that path, or the single allowed URI);
    else ``reason``."""

    read: str | None
    reason: str | None = None


def allowed_source(uri: str, roots: list[str], allow_http: bool = False, recorded: bool = True) -> Decision:
    """Whether the audit may read ``uri`` given the allowed ``roots`` (full URLs); ``recorded``
    says whether those are the archive's recorded roots or the job's (for the message)."""
    where = "the archive's recorded source root" if recorded else "the audit job's source_roots"
    refusal = scheme_refusal(uri, allow_http)
    if refusal is not None:
        return Decision(None, f"source not read: {uri}: {refusal}")
    loc = split_url(uri)
    if loc is None:
        return Decision(None, f"source not read: {uri} is not a URL the audit reads (no scheme, or another host's file)")
    if any(s in (".", "..") for s in loc.path.split("/")):
        return Decision(None, f"source not read: {uri} has a '.' or '..' path segment")
    if not roots:
        return Decision(None, f"source not read: {uri}: its row records no source root (archive format version 1); "
                              "name the folders to read in the audit job's source_roots")
    for root in roots:
        base = split_url(root) if scheme_refusal(root, allow_http) is None else None  # a chain admits nothing
        if base is None or base.scheme != loc.scheme or base.host != loc.host:
            continue
        base = base if _under(loc.path, base.path) else _base(base)
        if not _under(loc.path, base.path) or any(s in (".", "..") for s in base.path.split("/")):
            continue
        if loc.scheme != "file":
            return Decision(uri)  # read_bytes hands it to fsspec as is: one unchained, allowed scheme
        return _local(uri, loc.path, base.path, where, root)
    shown = ", ".join(roots[:3]) + (f" (+{len(roots) - 3} more)" if len(roots) > 3 else "")
    return Decision(None, f"source not read: {uri} is outside {where} ({shown})")


def _local(uri: str, path: str, base: str, where: str, root: str) -> Decision:
    """A local source under ``base`` by name: its real path must be too (no symlink out), and it
    must be a regular file. A missing file is allowed (reading it reports it missing)."""
    real, top = os.path.realpath(path), os.path.realpath(base)
    if local_path(real) != real:  # read_bytes must open exactly the path checked here, never parse it as a URL
        return Decision(None, f"source not read: {uri}: its real path {real} would not be read as that local path")
    if os.path.commonpath([real, top]) != top:
        return Decision(None, f"source not read: {uri} leads outside {where} ({root}) through a symlink "
                              f"(its real path is {real})")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return Decision(real)
    except OSError as exc:
        return Decision(None, f"source unreadable: {uri}: {exc.strerror or exc}")
    if not stat.S_ISREG(mode):
        return Decision(None, f"source not read: {uri} is not a regular file")
    return Decision(real)


# -- reading an allowed source ----------------------------------------------------------------
@dataclass(frozen=True)
class SourcePolicy:
    """Where the audit may read sources: ``roots`` (full URLs) named by the audit job, which
    replace the archive's recorded roots when given; ``allow_http`` lets http(s) sources be read;
    ``max_pixels`` is the pixel limit compress decoded under (the archive's, else the default)."""

    roots: tuple[str, ...] = ()
    allow_http: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS


def recorded_max_pixels(settings: dict[str, Any]) -> int:
    """The pixel limit compress used for this archive: its recorded ``max_pixels`` when the
    settings hold a positive integer, else :data:`~sg3archive.images.DEFAULT_MAX_PIXELS`."""
    value = settings.get("max_pixels")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class SourcePixels:
    """A source the audit read, unchanged since compress: ``original`` is its decoded ``[H, W, 3]``
    uint8 at the original size (what every quality figure is measured against); ``square`` the
    ``[3, R, R]`` tensor fitted as recorded (latent rows only, else None: the square diagnostics)."""

    original: np.ndarray
    square: torch.Tensor | None = None


def reachable_source(row: dict[str, Any], storage_options: dict[str, Any] | None,
                     policy: SourcePolicy) -> tuple[torch.Tensor | None, dict[str, str] | None]:
    """``(fitted source [3, R, R], None)`` when the source may be read (:func:`allowed_source`:
    under ``policy.roots``, else the row's recorded ``source_root``), can still be read, its
    sha256 is the recorded one and it fits to the recorded square; else ``(None, {id, uri, kind,
    reason})`` with kind ``refused`` (not read: outside the roots, a scheme the audit does not
    read, http(s) unless allowed, a symlink out), ``missing``, ``changed`` or ``unreadable`` (any
    error reading, decoding or fitting it: one source's failure is recorded, the audit goes on)."""
    pixels, unverified = read_source(row, storage_options, policy, square=True)
    return (pixels.square if pixels is not None else None), unverified


def read_source(row: dict[str, Any], storage_options: dict[str, Any] | None, policy: SourcePolicy,
                square: bool = True) -> tuple[SourcePixels | None, dict[str, str] | None]:
    """The source of ``row`` as :class:`SourcePixels` (``square``: fitted too, and the fit must be
    the recorded one), or ``(None, {id, uri, kind, reason})`` as :func:`reachable_source` says.
    The decoded original must have the row's recorded width and height."""
    uri = fmt.exact_uri(row)  # a surrogateescape str for a name that is not UTF-8
    exact = row.get("source_uri_bytes") is not None
    recorded_root = fmt.unstored_text(row["source_root"]) if exact and row.get("source_root") else row.get("source_root")

    def unverified(kind: str, reason: str) -> tuple[None, dict[str, str]]:
        return None, {"id": row["id"], "uri": uri, "kind": kind, "reason": reason}

    roots = list(policy.roots) if policy.roots else [r for r in [recorded_root] if r]
    decision = allowed_source(uri, roots, policy.allow_http, recorded=not policy.roots)
    if decision.read is None:
        return unverified("refused", decision.reason or f"source not read: {uri}")
    try:  # decision.read is exactly what allowed_source checked: a local real path, or the URI itself
        data = read_bytes(decision.read, storage_options)
    except FileNotFoundError:
        return unverified("missing", f"source missing: {uri}")
    except Exception as exc:  # noqa: BLE001 - any backend's failure (EOFError, aiohttp, ftplib…) is this source's
        return unverified("unreadable", f"source unreadable: {uri}: {one_line(exc)}")
    found = sha256_hex(data)
    if found != row["source_sha256"]:
        return unverified("changed", f"source changed: {uri}: sha256 expected {row['source_sha256']} found {found}")
    try:
        if square:
            recorded = FitInfo.from_json(row["fit"])
            fitted = load_fitted(data, recorded.resolution, recorded.mode, max_pixels=policy.max_pixels, uri=uri,
                                 keep_original=True)
            if fitted.fit != recorded:
                return unverified("unreadable", f"source unreadable: {uri}: it fits as {fitted.fit.to_json()}, "
                                                f"not as recorded at encode time ({recorded.to_json()})")
            assert fitted.original is not None
            pixels = SourcePixels(fitted.original, fitted.tensor)
        else:
            pixels = SourcePixels(decode_image(data, max_pixels=policy.max_pixels, uri=uri).rgb)
    except Exception as exc:  # noqa: BLE001 - a decoder's failure on one source never ends the audit
        return unverified("unreadable", f"source unreadable: {uri}: {one_line(exc)}")
    height, width = pixels.original.shape[:2]
    want = (row.get("width"), row.get("height"))
    if None not in want and want != (width, height):
        return unverified("unreadable", f"source unreadable: {uri}: it decodes as {width}×{height}, not as recorded "
                                        f"at encode time ({want[0]}×{want[1]})")
    return pixels, None


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__
