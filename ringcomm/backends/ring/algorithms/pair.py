"""Two ranks over TCP: a small all-reduce in one call of the compiled core.

The core sends this rank's message (header and data) without blocking while it
receives the other's, compares the other's header with this call, and reduces both
rows in rank order. Where its short wait runs out, the socket loop goes on from
where the core stopped (bytes sent and received so far), with the deadline, the
checks and the error messages of every other path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from .... import native
from ....errors import PeerError
from ....signature import Signature
from ....transport import header
from ....transport.net import describe_errno
from ....transport.net import exchange as socket_exchange
from ....transport.tcp import TcpLink
from ..call import Check

__all__ = ["OPCODES", "PairPlan", "allreduce", "plan"]
_DONE, _GONE, _MISMATCH, _PENDING = (native.Codes.DONE, native.Codes.GONE,
                                     native.Codes.MISMATCH, native.Codes.PENDING)
# The core's operations, by the ufunc that reduces in Python.
OPCODES: dict[object, int] = {np.add: 0, np.maximum: 1, np.minimum: 2, np.multiply: 3,
                              np.bitwise_and: 4, np.bitwise_or: 5, np.bitwise_xor: 6}


class PairPlan(NamedTuple):
    """What a small all-reduce of one kind needs on every call in a group of two over TCP."""

    template: bytes  # this rank's header with call number 0
    rows: np.ndarray  # both ranks' messages (header and data) in rank order: (2, header + n)
    kind: int  # the core's element kind, or -1: Python reduces
    opcode: int  # the core's op (sum, max, min), or -1
    ufunc: np.ufunc
    sig: Signature  # the call with number 0 (for error messages)


def plan(sig: Signature, dtype: np.dtype, ufunc: Callable, nbytes: int | None = None
         ) -> PairPlan:
    """Return the plan of calls like `sig` (call number 0) that move `nbytes` (by default
    the whole array of `sig`'s shape)."""
    n = int(np.prod(sig.shape, dtype=np.int64)) * dtype.itemsize if nbytes is None else nbytes
    opcode = OPCODES.get(ufunc, -1)
    return PairPlan(header.pack(sig), np.empty((2, header.SIZE + n), np.uint8),
                    native.kind(dtype) if opcode >= 0 else -1, opcode,
                    ufunc, sig)  # type: ignore[arg-type]


def allreduce(src: np.ndarray, out: np.ndarray, plan: PairPlan, seq: int, rank: int,
              right: TcpLink, left: TcpLink, check: Check, label: str, spin: float,
              blocking: Callable[[bool], None] | None = None) -> bool:
    """All-reduce `src` (contiguous) with the other rank into `out`; return whether the
    core's one call did it all (False: the socket loop finished it).

    `check` checks the other's header; `blocking(True)` / `blocking(False)` are called
    around the socket loop's wait (the watch's record of a call that blocks).
    """
    code, sent, got, out_errno, in_errno = native.CORE.pair_allreduce(  # type: ignore[union-attr]
        right.fileno(), left.fileno(), plan.rows, rank, plan.template, seq, src, out,
        plan.kind, plan.opcode, spin)
    if code == _DONE:
        return True
    op = plan.sig.op.label
    if code == _GONE:
        link, err = (right, out_errno) if out_errno else (left, in_errno)
        if err > 0:
            raise PeerError(f"{op}: connection to {link.peer} failed: "
                            f"{describe_errno(OSError(err, os.strerror(err)))}")
        raise PeerError(f"{op}: {link.peer} closed the connection (did it exit or crash?)")
    hs = header.SIZE
    mine, theirs = plan.rows[rank], plan.rows[1 - rank]
    if code == _MISMATCH:
        check(theirs[:hs].data)
        raise PeerError(f"{op}: the headers of the {label} group differ, yet match when read "
                        "again (memory corrupted?)")
    if code == _PENDING:
        if blocking is not None:
            blocking(True)
        try:
            socket_exchange(right.sock, mine.data, left.sock, theirs.data, hs, check,
                            left.timeout, peer_out=right.peer, peer_in=left.peer, op=op,
                            sent=sent, got=got)
        finally:
            if blocking is not None:
                blocking(False)
    dt = plan.sig.dtype
    plan.ufunc(plan.rows[0, hs:].view(dt), plan.rows[1, hs:].view(dt), out=out.reshape(-1))
    return False
