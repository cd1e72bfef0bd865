"""Shared memory between the ranks of one host: a segment, sequence flags, and waiting.

The transport is three files: `segment` (the segment's name, lifecycle and layout, fences,
liveness, the private wake-up sockets), `shared` (`Shared`: posting and waiting) and
`shmlink` (`ShmLink`); this module is its overview and its public names.

A group's ranks on one host share one segment, POSIX shared memory named
``ringcomm-<leader pid>-<tag>`` (under /dev/shm on Linux). The host's first
rank of the group creates it, the others attach, and once every one of them
has attached the creator unlinks the name: the memory lives on while it is
mapped and goes with the last process, however that process ends.

Each local rank owns one region of the segment and writes only there:

    control line (64 B): posted count, sleeping flag, abandoned flag
    two slots: a 128-byte call header, then a small message (alternating by post)
    two halves of staging memory for large messages (alternating by chunk)
    with links: one channel to each other local rank per set of links (a line
      the sender writes, a line the receiver writes, a ring buffer)

A rank *posts* when its region holds what the others need: it bumps its
posted count. The others *wait* until every peer's count reaches the same
number. Ranks make the same posts in the same order, so counts match.

Memory ordering. The data a rank writes must be visible before its count is:
- x86-64 keeps stores in order and loads in order (TSO), so writing the data,
  then the count (one aligned 8-byte store, so never torn) is a release, and
  reading the count, then the data is an acquire. Each is a separate C call of
  the interpreter, which the compiler cannot reorder.
- Elsewhere (arm64, Apple silicon) `release()` before the count's store and
  `acquire()` after the count's load are real fences (C11
  ``atomic_thread_fence``, through libatomic or libSystem).
Sleeping needs more: a waiter sets its sleeping flag and then reads the count,
a poster sets its count and then reads the flags. A store followed by a load
of another address can pass each other even on x86, so both sides put a full
fence (`full_fence()`) between the two; x86 gets it from a locked instruction
(taking an uncontended lock), elsewhere from the C11 fence.

Waiting spins for a short while (only when the host has a core for every
local rank), then yields the core (`os.sched_yield`), then blocks on a
datagram socket that posters write to when a waiter's sleeping flag is set.
A blocked waiter also wakes every SLEEP_SECONDS to check the job's abort
state, its deadline, and whether the peers it waits for are alive.

Links (`ShmLink`, the shared-memory kind of `transport.link.Link`) carry a
byte stream each way between two local ranks, for send/recv and for rings
whose neighbours share a host. A channel is a single-producer,
single-consumer ring buffer: the sender writes bytes at `head`, then
publishes `head` (a release, as above); the receiver reads up to `head`,
then publishes `tail` (a release too: its reads are done before the sender
may overwrite them). Each end waits the same way as a post does, on wake-up
sockets of its own per channel and direction, so several threads of one
rank (the pipelined ring's senders and receivers) never take each other's
wake-ups. Where the compiled core is built, each link also holds its
`Channel` (`ShmLink.core`): the same two rings, for small send/recv that
move whole in one call; the counters live in the shared words, so both
ends' Python and C code may take turns on one channel.
"""

from __future__ import annotations

from .segment import (
    HEADER,
    LINE,
    LINK_BUDGET,
    MAX_LOCAL_RANKS,
    MIN_LINK_BYTES,
    PREFIX,
    SLOT_BYTES,
    WAKE_PREFIX,
    alive,
    attach,
    available,
    check_wake_directory,
    create,
    leftovers,
    link_bytes,
    region_bytes,
    remove_wake_directory,
    segment_name,
    sweep,
    unlink,
    wake_directory,
)
from .shared import Shared
from .shmlink import ShmLink

__all__ = [
    "HEADER", "LINE", "LINK_BUDGET", "MAX_LOCAL_RANKS", "MIN_LINK_BYTES", "PREFIX", "SLOT_BYTES",
    "WAKE_PREFIX", "Shared", "ShmLink", "alive", "attach", "available", "check_wake_directory",
    "create", "leftovers", "link_bytes", "region_bytes",
    "remove_wake_directory", "segment_name", "sweep", "unlink", "wake_directory",
]
