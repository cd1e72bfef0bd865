"""Recursive doubling: every rank's message reaches every other in log2(p) exchanges.

At step k each rank exchanges the 2**k slots (header and data) it holds with rank
r xor 2**k over a direct link, and checks every header it receives. Only for a power
of two ranks; the model in docs/architecture.md ("Small calls") says when it beats
the ring.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ....transport import header
from ....transport.link import Link, exchange
from ..call import Check

__all__ = ["fits", "gather"]


def fits(size: int) -> bool:
    """Return whether `size` ranks can double: a power of two past 2."""
    return size > 2 and size & (size - 1) == 0


def gather(slots: np.ndarray, links: dict[int, Link], rank: int,
           check: Callable[[int], Check], op: str, spin: float) -> None:
    """Fill `slots` (size, header + n bytes), whose row `rank` holds this rank's message,
    with every rank's; `links[q]` reaches rank q, `check(q)` checks rank q's header."""
    p, hs = len(slots), header.SIZE
    k = 1
    while k < p:
        partner = rank ^ k
        mine, theirs = rank & ~(k - 1), partner & ~(k - 1)
        link = links[partner]
        got = slots[theirs:theirs + k]
        exchange(link, slots[mine:mine + k].reshape(-1).data, link, got.reshape(-1).data, hs,
                 check(theirs), op=op, spin=spin)
        for j in range(1, k):  # the first was checked on arrival
            check(theirs + j)(got[j, :hs].data)
        k <<= 1
