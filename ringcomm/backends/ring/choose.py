"""Which algorithm a call of a ring group takes: decided here, once per call, for every op.

The group's layout decides first (every rank is on this host: its segment; every host has
as many ranks: hierarchical; else the flat ring over links), then size and ranks decide
between the latency and bandwidth paths of the ring. Every rank sees the same layout,
sizes and settings, so every rank takes the same algorithm. The crossovers come from the
alpha-beta model fitted by `benchmarks/model.py` (docs/architecture.md, "Small calls").
"""

from __future__ import annotations

import enum

from .algorithms import doubling

__all__ = ["PAIR_SMALL_BYTES", "SMALL_BYTES", "Algorithm", "Layout", "gather", "layout", "reduce"]

# Messages take the latency path while each rank's traffic, (size-1) times the message, is at
# most this many bytes. Measured at p=2 on 2 cores, one run: at 128 KiB 93 us against 778 us for
# the pipelined ring (its thread hand-offs cost about 0.6 ms), at 2 MiB 0.8 ms against 1.5 ms,
# even at 4 MiB, and at 16 MiB the pipelined ring wins (10 ms against 18 ms).
SMALL_BYTES = 4 << 20
# All-reduces up to this size in a group of two ranks joined by TCP take the compiled core's
# exchange (one call sends, receives, checks and reduces): the decode step's 16 KiB and more.
PAIR_SMALL_BYTES = 64 << 10


class Layout(str, enum.Enum):
    """Where a group's ranks are."""

    ALONE = "alone"  # a group of one
    HOST = "host"  # every rank on this host: collectives through its segment (algorithms.host)
    HIERARCHICAL = "hierarchical"  # as many ranks on every host (algorithms.hierarchical)
    RING = "ring"  # the flat ring over links (TCP, or shared memory between neighbours)


class Algorithm(str, enum.Enum):
    """How a call moves data over the flat ring's links."""

    PAIR = "pair"  # two ranks over TCP: one call of the compiled core (algorithms.pair)
    DOUBLING = "doubling"  # recursive doubling over direct links (algorithms.doubling)
    LATENCY = "latency"  # every rank's message once around the ring (algorithms.ring)
    PIPELINE = "pipeline"  # the pipelined bandwidth ring over every lane (algorithms.pipeline)


def layout(size: int, host: bool, hierarchical: bool) -> Layout:
    if size == 1:
        return Layout.ALONE
    if host:
        return Layout.HIERARCHICAL if hierarchical else Layout.HOST
    return Layout.RING


def gather(nbytes: int, size: int) -> Algorithm:
    """The algorithm of all_gather, reduce_scatter and broadcast of `nbytes` per rank."""
    return Algorithm.LATENCY if nbytes * (size - 1) <= SMALL_BYTES else Algorithm.PIPELINE


def reduce(nbytes: int, elements: int, size: int, lanes: int, pair: bool,
           setting: str) -> Algorithm:
    """The algorithm of an all-reduce of `nbytes` (`elements`) per rank over the flat ring.

    `pair`: two ranks joined by TCP with the compiled core; `setting`: RINGCOMM_ALGORITHM.
    The pipelined ring needs two elements per lane and rank to cut.
    """
    if gather(nbytes, size) is Algorithm.PIPELINE and elements >= 2 * lanes * size:
        return Algorithm.PIPELINE
    if pair and 0 < nbytes <= PAIR_SMALL_BYTES:
        return Algorithm.PAIR
    if setting != "ring" and doubling.fits(size):
        return Algorithm.DOUBLING
    return Algorithm.LATENCY
