"""The header every message carries, and the check that ranks called the same thing.

A header is a fixed 128 bytes: the call's op, sequence number, group, dtype and
shape. The receiver compares it with the call it is making itself, so ranks
that disagree learn it before a single byte of data is read as an array.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from ..arrays import dtype_code, dtype_from_code

__all__ = ["SIZE", "Op", "Signature"]

MAGIC = b"RCM1"
_MAX_DIMS = 11
_FMT = struct.Struct(f"<4sBBBxqQii{_MAX_DIMS}q")
SIZE = 128
assert _FMT.size <= SIZE


class Op(enum.IntEnum):
    """The operation a message belongs to."""

    ALL_SUM = 1
    ALL_MAX = 2
    ALL_MIN = 3
    ALL_GATHER = 4
    SUM_SCATTER = 5
    BROADCAST = 6
    BARRIER = 7
    SEND = 8
    SPLIT = 9

    @property
    def label(self) -> str:
        return self.name.lower()


def _dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the shape padded to _MAX_DIMS; longer shapes end in a digest of the rest."""
    if len(shape) <= _MAX_DIMS:
        return tuple(shape) + (0,) * (_MAX_DIMS - len(shape))
    rest = hashlib.blake2b(repr(shape).encode(), digest_size=8).digest()
    return tuple(shape[: _MAX_DIMS - 1]) + (int.from_bytes(rest, "little", signed=True),)


@dataclass(frozen=True)
class Signature:
    """What a rank is calling: compared field by field across ranks."""

    op: Op
    seq: int
    group: int
    dtype: np.dtype
    shape: tuple[int, ...]
    rank: int = -1  # the sender's rank in the group
    arg: int = 0  # the op's own argument: broadcast's root

    def pack(self) -> bytes:
        body = _FMT.pack(
            MAGIC, int(self.op), dtype_code(self.dtype), len(self.shape), self.seq,
            self.group, self.rank, self.arg, *_dims(self.shape),
        )
        return body.ljust(SIZE, b"\0")

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Signature | None:
        """Return the signature in `data`, or None when it is not a ringcomm header."""
        magic, op, code, ndim, seq, group, rank, arg, *dims = _FMT.unpack_from(data)
        dt = dtype_from_code(code)
        if magic != MAGIC or dt is None or op not in Op._value2member_map_:
            return None
        shape = tuple(dims[: min(ndim, _MAX_DIMS)])
        if ndim > _MAX_DIMS:
            shape = tuple(dims[: _MAX_DIMS - 1]) + (-1,) * (ndim - _MAX_DIMS + 1)
        return cls(Op(op), seq, group, dt, shape, rank, arg)

    def call(self) -> str:
        """Return the call as text, like all_sum(float32, shape (10, 3))."""
        if self.op == Op.BARRIER:
            return "barrier()"
        shape = "(" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + (
            ",)" if len(self.shape) == 1 else ")")
        root = f", root={self.arg}" if self.op == Op.BROADCAST else ""
        return f"{self.op.label}({self.dtype}, shape {shape}{root}) [call #{self.seq}]"

    def differs(self, other: Signature) -> str | None:
        """Return what differs between two ranks' calls, or None when they match."""
        if self.group != other.group:
            return "the calls were made in different groups"
        if self.op != other.op:
            return "the operations differ"
        if self.seq != other.seq:
            return "the ranks are at different calls in the sequence (one skipped a collective?)"
        if self.dtype != other.dtype:
            return "the dtypes differ"
        if _dims(self.shape) != _dims(other.shape) or len(self.shape) != len(other.shape):
            return "the shapes differ"
        if self.arg != other.arg:
            return "the roots differ"
        return None
