"""The optional compiled core (`ringcomm._native`): whether it is here, and whether it is used.

The package builds it from ringcomm/csrc/ where a C compiler works (setup.py) and
runs without it where none does. ``RINGCOMM_NATIVE=0`` forces the pure-Python path;
``RINGCOMM_NATIVE=1`` makes a missing core an error instead of a quiet fallback.
`PATH` names the path this process runs: "native" or "python".

The core writes and compares the 128-byte call header at fixed offsets; the header's layout
lives in transport/header.py, and `_load` checks that the core's offsets (its module
constants) are the ones that layout gives, so that the two can never drift apart unnoticed.
"""

from __future__ import annotations

import os
import re
import struct
import sys
from types import ModuleType

import numpy as np

from . import environment

__all__ = ["CORE", "KINDS", "PATH", "Codes", "kind"]


class Codes:
    """What the core's calls return (ringcomm/csrc/core.h)."""

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


# The header's fields in the order of its struct format (header.py's `pack`): the core writes
# the call number (seq) and skips the sender's rank when it compares two headers.
_HEADER_FIELDS = ("magic", "op", "dtype", "ndim", "seq", "group", "rank", "arg")


def _header_layout(fmt: str) -> dict[str, tuple[int, int]]:
    """Return the (offset, size) of each named field of the header's struct format `fmt`."""
    order, body = fmt[:1], fmt[1:]
    if order != "<":
        raise ValueError(f"the header is packed little-endian, without padding: not {fmt!r}")
    fields, at = {}, 0
    names = iter(_HEADER_FIELDS)
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", body):
        size = struct.calcsize(order + code)
        repeat = int(count or 1)
        if code == "x":
            at += repeat
            continue
        if code in "sp":  # one field of `repeat` bytes
            size, repeat = repeat, 1
        for _ in range(repeat):
            name = next(names, None)
            if name is not None:
                fields[name] = (at, size)
            at += size
    return fields


def _check_header(core: ModuleType) -> None:
    """Raise ImportError unless the core's header offsets are transport/header.py's."""
    # Here, not at module level: header.py's layout is the one source of the offsets, read
    # only where the core is loaded. header.py imports the arrays and the backends' signature,
    # none of which imports this module: no circle either way (tests/test_shape.py checks).
    from .transport import header

    layout = _header_layout(header._FMT.format)
    want = {"HEADER_BYTES": header.SIZE, "SEQ_AT": layout["seq"][0],
            "SEQ_BYTES": layout["seq"][1], "RANK_AT": layout["rank"][0],
            "RANK_BYTES": layout["rank"][1]}
    have = {name: getattr(core, name, None) for name in want}
    if have != want:
        raise ImportError(
            f"ringcomm's compiled core ({core.__file__}) lays out the call header as {have}, "
            f"but transport/header.py as {want}: the core is stale or out of step; rebuild "
            f"it (pip install -e .), or set {environment.NATIVE}=0 to run the pure-Python path")


def _host_problem() -> str | None:
    """Return why this host cannot run the core, or None when it can.

    The core writes the header's numbers little-endian and shares 8-byte counters between
    processes, which a 32-bit host would tear (the C sources refuse to build there too).
    """
    if sys.byteorder != "little":
        return f"this host is {sys.byteorder}-endian and the core writes little-endian headers"
    if sys.maxsize < 2**63 - 1:
        return "this host is 32-bit and the core shares 8-byte counters, which would tear"
    return None


def _load() -> tuple[ModuleType | None, str]:
    want = os.environ.get(environment.NATIVE, "").strip().lower()
    if want in ("0", "false", "no", "off", "python"):
        return None, "python"
    problem = _host_problem()
    if problem is not None:
        if want in ("1", "true", "yes", "on", "native"):
            raise ImportError(
                f"{environment.NATIVE}={want} but ringcomm's compiled core does not run here: "
                f"{problem}; unset {environment.NATIVE} to run the pure-Python path")
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
    _check_header(_native)
    return _native, "native"


CORE, PATH = _load()
