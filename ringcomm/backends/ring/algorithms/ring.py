"""The latency path of the ring: every rank's message passes once around it.

Each slot is a header followed by the data, so one send and usually one receive
per step carry both, and a forwarded header still names its origin. p - 1 steps.
"""

from __future__ import annotations

import numpy as np

from ....transport import header
from ....transport.link import Link, exchange
from ..call import Check

__all__ = ["gather"]


def gather(slots: np.ndarray, right: Link, left: Link, rank: int, check: Check, op: str,
           spin: float) -> None:
    """Fill `slots` (size, header + n bytes), whose row `rank` holds this rank's message,
    with every rank's: at step s send the slot of rank r - s, receive that of r - s - 1.
    `check` checks each header that arrives from the left."""
    p, hs = len(slots), header.SIZE
    for s in range(p - 1):
        out_i, in_i = (rank - s) % p, (rank - s - 1) % p
        exchange(right, memoryview(slots[out_i]), left, memoryview(slots[in_i]), hs, check,
                 op=op, spin=spin)
