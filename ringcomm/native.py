"""The optional compiled core (`ringcomm._native`): whether it is here, and whether it is used.

The package builds it from ringcomm/_native.c where a C compiler works (setup.py) and
runs without it where none does. ``RINGCOMM_NATIVE=0`` forces the pure-Python path;
``RINGCOMM_NATIVE=1`` makes a missing core an error instead of a quiet fallback.
`PATH` names the path this process runs: "native" or "python".
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

import numpy as np

from . import environment

__all__ = ["CORE", "KINDS", "PATH", "Codes", "kind"]


class Codes:
    """What the core's calls return (_native.c)."""

    DONE = 0
    PENDING = 1  # posted; not every rank has yet: wait, then finish
    MISMATCH = 2  # the headers differ: build the error
    GONE = 3  # a rank left the job
    REDUCE = 4  # checked; the core does not reduce this dtype: reduce in Python


# The dtypes the core reduces, by its kind number.
KINDS = {np.dtype(t): k for k, t in enumerate(
    ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
     "uint64", "bool"))}


def kind(dtype: np.dtype) -> int:
    """Return the core's kind number of `dtype`, or -1 when Python reduces it."""
    return KINDS.get(dtype, -1)


def _load() -> tuple[ModuleType | None, str]:
    want = os.environ.get(environment.NATIVE, "").strip().lower()
    if want in ("0", "false", "no", "off", "python"):
        return None, "python"
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError as e:
        if want in ("1", "true", "yes", "on", "native"):
            raise ImportError(
                f"{environment.NATIVE}={want} but ringcomm's compiled core is not built ({e}); "
                "reinstall with a C compiler present (pip install -e . builds it), or unset "
                f"{environment.NATIVE} to run the pure-Python path") from e
        return None, "python"
    if sys.byteorder != "little":  # pragma: no cover - the core writes little-endian headers
        return None, "python"
    return _native, "native"


CORE, PATH = _load()
