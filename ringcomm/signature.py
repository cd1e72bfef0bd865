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

__all__ = ["REDUCTIONS", "SCATTER_OPS", "Op", "ReduceOp", "Signature"]


class ReduceOp(enum.Enum):
    """Elementwise reduction of `all_reduce` and `reduce_scatter`.

    On bool arrays SUM is logical or and PROD logical and. AVG is SUM divided by the group's
    size, for floating and complex dtypes. BAND, BOR and BXOR are bitwise, for integers and
    bool. MAX and MIN order complex numbers as NumPy does: by real part, then imaginary.
    """

    SUM = "sum"
    AVG = "avg"
    PROD = "prod"
    MAX = "max"
    MIN = "min"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"

    @property
    def ufunc(self) -> np.ufunc:
        """Return the NumPy ufunc that reduces two arrays elementwise by this op (AVG sums:
        the caller divides)."""
        return _UFUNCS[self]

    def refuses(self, dt: np.dtype) -> str | None:
        """Return why this op cannot reduce arrays of dtype `dt`, or None when it can."""
        kind = dt.kind
        if self is ReduceOp.AVG and kind not in "fcV":  # V: bfloat16 (ml_dtypes)
            return ("an average of integers is not an integer; cast to a floating dtype, "
                    "or sum and divide")
        if self in _BITWISE and kind not in "biu":
            return f"{self.value} is bitwise: it takes integer or bool arrays"
        return None


_UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.AVG: np.add, ReduceOp.PROD: np.multiply,
           ReduceOp.MAX: np.maximum, ReduceOp.MIN: np.minimum, ReduceOp.BAND: np.bitwise_and,
           ReduceOp.BOR: np.bitwise_or, ReduceOp.BXOR: np.bitwise_xor}
_BITWISE = (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)


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
    ALL_PROD = 14
    ALL_AVG = 15
    ALL_BAND = 16
    ALL_BOR = 17
    ALL_BXOR = 18
    ALL_GATHER_V = 19  # the agreement on counts that opens a variable-size call
    REDUCE_SCATTER_V = 20
    ALL_TO_ALL_V = 21
    NEW_GROUP = 22  # the members' agreement on a group made without the others

    @property
    def label(self) -> str:
        """Return the op's name as the API spells it (all_sum)."""
        return _LABELS[self]


_LABELS = {op: op.name.lower() for op in Op}
_LABELS[Op.ALL_PROD] = "all_reduce(prod)"
_LABELS[Op.ALL_AVG] = "all_reduce(avg)"
for _op in (Op.ALL_BAND, Op.ALL_BOR, Op.ALL_BXOR):
    _LABELS[_op] = f"all_reduce({_op.name[4:].lower()})"


# The op each reduction is called as.
REDUCTIONS = {ReduceOp.SUM: Op.ALL_SUM, ReduceOp.MAX: Op.ALL_MAX, ReduceOp.MIN: Op.ALL_MIN,
              ReduceOp.PROD: Op.ALL_PROD, ReduceOp.AVG: Op.ALL_AVG, ReduceOp.BAND: Op.ALL_BAND,
              ReduceOp.BOR: Op.ALL_BOR, ReduceOp.BXOR: Op.ALL_BXOR}
# A reduce-scatter's op travels in the signature's argument (SUM is 0: sum_scatter's calls
# are as they were).
SCATTER_OPS = {op: i for i, op in enumerate(ReduceOp)}


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
        if self.op in (Op.BROADCAST, Op.GATHER, Op.SCATTER):
            extra = f", root={self.arg}"
        elif self.op is Op.SUM_SCATTER and self.arg:
            extra = f", op={_SCATTER_NAMES.get(self.arg, self.arg)}"
        elif self.op in _COUNTED and self.arg:
            extra = f", counts #{self.arg & 0xFFFF:04x}"  # a digest of the counts
        else:
            extra = ""
        return f"{self.op.label}({self.dtype}, shape {shape}{extra}) [call #{self.seq}]"

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
            if self.op is Op.SUM_SCATTER:
                return "the reduce ops differ"
            if self.op in _COUNTED:
                return "the counts differ"
            return "the roots differ"
        return None


_SCATTER_NAMES = {i: op.value for op, i in SCATTER_OPS.items()}
_COUNTED = (Op.ALL_GATHER_V, Op.REDUCE_SCATTER_V, Op.ALL_TO_ALL_V, Op.NEW_GROUP)
