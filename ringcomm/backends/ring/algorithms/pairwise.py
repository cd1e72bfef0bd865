"""all_to_all as p - 1 direct exchanges: at step s, send block r+s and receive block r-s.

Every step first exchanges the call headers alone, so every rank checks every other
rank's call before any data moves; then the blocks go straight from the input into
the output. Each byte crosses one link once (the ring would carry p times as much).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ....transport import header
from ....transport.link import Link, exchange
from ..call import Check

__all__ = ["all_to_all"]


def _nothing(raw: memoryview) -> None:
    return None


def all_to_all(blocks: np.ndarray, got: np.ndarray, links: dict[int, Link], rank: int,
               mine: bytes, check: Callable[[int], Check], op: str) -> None:
    """Send row j of `blocks` to rank j and receive rank j's into row j of `got` (bytes,
    (size, n)); `mine` is this rank's header, `check(q)` checks rank q's."""
    p = len(blocks)
    got[rank] = blocks[rank]
    hdr = memoryview(mine)
    theirs = memoryview(bytearray(header.SIZE))
    for s in range(1, p):
        dst, src = (rank + s) % p, (rank - s) % p
        exchange(links[dst], hdr, links[src], theirs, header.SIZE, check(src), op=op)
        exchange(links[dst], memoryview(blocks[dst]), links[src], memoryview(got[src]), 0,
                 _nothing, op=op)
