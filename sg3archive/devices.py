"""Choosing the torch device a job runs on (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

import re

import torch

from sg3archive.errors import Sg3ArchiveError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
DEVICE_HELP = "where the models run: cpu, cuda, cuda:N or auto"  # the --device flag's help and job field's description
_NAME = re.compile(r"^(auto|cpu|cuda(:\d{1,3})?)$")


class DeviceError(Sg3ArchiveError, ValueError):
    """A device name that is not one, or a device this machine does not have."""


def check_device_name(name: str) -> str:
    """``name`` if it is a device name we accept (``auto``, ``cpu``, ``cuda``, ``cuda:N``), else
    :class:`DeviceError`. Syntax only: whether the machine has that device is checked when a job
    runs (a manifest may be written on a laptop and run on a GPU node)."""
    if not isinstance(name, str) or not _NAME.match(name.strip()):
        raise DeviceError(f"device {name!r} is not a device name; use {DEVICE_NAMES}")
    return name.strip()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → the first CUDA device if there is one, else CPU; a CUDA name on a machine
    without CUDA is an error that says so (:class:`DeviceError`, also a ``ValueError``)."""
    if isinstance(name, torch.device):
        return name
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r}: no CUDA device is available on this machine; use cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    return device
