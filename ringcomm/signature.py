"""The vocabulary of calls: what a rank is calling, how it reduces, how two ranks' calls differ.

A leaf: it imports nothing of ringcomm's, so the transports (which put a call on the wire)
and the backends (which make calls) both build on it. Every backend checks that the ranks of
a group make the same calls in the same order. A `Signature` describes one call (op, call
number, group, dtype, shape, root); `differs` says what two ranks disagree on and `describe`
writes a call for an error message. How a signature travels is the transport's business
(`ringcomm.transport.header` packs it into the TCP header; the MPI backend agrees on a hash
of it).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

__all__ = ["REDUCTIONS", "Op", "ReduceOp", "Signature"]


class ReduceOp(enum.Enum):
    """Elementwise reduction of `all_reduce` and `reduce_scatter`."""

    SUM = "sum"  # on bool arrays: logical or
    MAX = "max"
    MIN = "min"

    @property
    def ufunc(self) -> np.ufunc:
        """Return the NumPy ufunc that reduces two arrays elementwise by this op."""
        return _UFUNCS[self]


_UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.MAX: np.maximum, ReduceOp.MIN: np.minimum}


class Op(enum.IntEnum):
    """The operation a message belongs to (its value travels on the wire)."""

    ALL_SUM = 1
    ALL_MAX = 2
    ALL_MIN = 3
    ALL_GATHER = 4
    SUM_SCATTER = 5
    BROADCAST = 6
    BARRIER = 7
    SEND = 8
    SPLIT = 9
    SETUP = 10  # a new group's set-up rounds (its shared memory)
    ALL_TO_ALL = 11
    GATHER = 12
    SCATTER = 13

    @property
    def label(self) -> str:
        """Return the op's name as the API spells it (all_sum)."""
        return _LABELS[self]


_LABELS = {op: op.name.lower() for op in Op}


# The op each reduction is called as.
REDUCTIONS = {ReduceOp.SUM: Op.ALL_SUM, ReduceOp.MAX: Op.ALL_MAX, ReduceOp.MIN: Op.ALL_MIN}


class Signature(NamedTuple):
    """What a rank is calling: compared field by field across ranks.

    A dimension of -1 in `shape` is one the wire could not carry (shown as '?').
    A tuple, not a dataclass: one is made per call, and a tuple is made in a fifth of the time.
    """

    op: Op
    seq: int
    group: int
    dtype: np.dtype
    shape: tuple[int, ...]
    rank: int = -1  # the caller's rank in the group
    arg: int = 0  # the op's own argument: broadcast's root

    def describe(self) -> str:
        """Return the call as text, like all_sum(float32, shape (10, 3)) [call #4]."""
        if self.op in (Op.BARRIER, Op.SPLIT, Op.SETUP):
            return f"{self.op.label}() [call #{self.seq}]"
        shape = "(" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + (
            ",)" if len(self.shape) == 1 else ")")
        root = f", root={self.arg}" if self.op in (Op.BROADCAST, Op.GATHER, Op.SCATTER) else ""
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
        if len(self.shape) != len(other.shape) or any(
                a != b and a >= 0 and b >= 0 for a, b in zip(self.shape, other.shape)):
            return "the shapes differ"
        if self.arg != other.arg:
            return "the roots differ"
        return None
