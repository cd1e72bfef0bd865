"""Broadcast of a large message: the root's data goes down the chain r+1, r+2, ... in chunks.

The caller has checked every rank's call first (the headers alone around the ring),
so a rank sends or waits for data only once all agree on the root. The last rank of
the chain then sends its header to the root once it has all the data, so the root,
which needs nobody else's data, returns only when the chain finished.
"""

from __future__ import annotations

import numpy as np

from ....transport import header
from ....transport.link import Link
from ..call import Check
from .pipeline import CHUNK_BYTES, chunks

__all__ = ["broadcast"]


def broadcast(raw: np.ndarray, root: int, rank: int, size: int, right: Link, left: Link,
              mine: bytes, check: Check, op: str) -> None:
    """Give every rank the root's `raw` (bytes); `mine` is this rank's header, `check`
    checks the header of the left neighbour (the root's, from the end of the chain)."""
    last = (rank + 1) % size == root
    for a, b in chunks(0, raw.size, CHUNK_BYTES):
        piece = raw[a:b].data
        if rank != root and b > a:
            left.recv_into(piece, op)
        if not last and b > a:
            right.send(piece, op)
    if last:
        right.send(mine, op)
    if rank == root:
        hdr = bytearray(header.SIZE)
        left.recv_into(memoryview(hdr), op)
        check(memoryview(hdr))
