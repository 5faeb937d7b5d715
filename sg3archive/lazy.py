"""Package ``__init__`` exports resolved on first use.

A package lists its public names and the module each lives in; importing the package imports none
of them, so ``import sg3archive.audit.thresholds`` does not pull in the whole audit (and with it the
pipeline and torch), and packages that use each other's public names never import in a cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names come from ``exports``
    (name -> module path relative to the package, e.g. ``{"run_audit": ".checks"}``)."""

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # resolved once
        return value

    def dir_() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return getattr_, dir_
