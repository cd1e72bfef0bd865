"""Hierarchical collectives: shared memory inside a host, one ring across hosts per local rank.

Every host has as many ranks; local rank i of every host joins ring i across hosts
(`across`), a group of its own. Shared memory is used as memory inside a host
(`host.Local`), and each byte crosses the network once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ....signature import Signature
from .host import Local
from .rows import even

if TYPE_CHECKING:
    from ..backend import RingBackend

__all__ = ["agree", "all_reduce"]


def agree(local: Local, across: RingBackend, sig: Signature) -> None:
    """Check call `sig` on this host, then across hosts, before any data moves.

    Each local rank checks on its own ring across hosts, so every such ring and thus
    every rank learns of a host whose ranks make another call.
    """
    local.check(sig)
    across.gather_headers(sig)


def all_reduce(flat: np.ndarray, dst: np.ndarray, ufunc: Callable, sig: Signature, local: Local,
               across: RingBackend, algorithm: str, took: Callable[[str], None]) -> None:
    """Reduce on this host, then across hosts (each local rank its slice), then share.

    A message that fits a slot takes three steps instead: every local rank reduces the
    host's data (one post), the host's first rank all-reduces that across hosts on its
    ring (one small exchange: doubling or the ring), and shares the result on the host
    (one post). The others wait for it meanwhile.
    """
    if flat.nbytes <= local.small and algorithm != "ring":
        took("shm+tcp-hierarchical-small")
        local.reduce_small(flat, dst, local.plan(sig._replace(seq=0), ufunc), sig.seq)
        if local.rank == 0:
            across.reduce_flat(dst, dst, ufunc, sig)
        local.broadcast(dst.view(np.uint8), 0, sig)
        return
    took("shm+tcp-hierarchical")
    bounds = even(flat.size, local.size)
    a, b = bounds[local.rank]
    mine = dst[a:b]
    local.reduce_slices(flat, mine, bounds, ufunc, sig)
    # The ring across hosts checks the group's call (not a call of its own): a host whose
    # ranks make another call is found there.
    across.reduce_flat(mine, mine, ufunc, sig)
    local.gather_slices(mine, dst, bounds, sig)
