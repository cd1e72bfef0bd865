"""The shared memory of a group's ranks on one host: set up all or nothing, every rank alike.

Every rank decides from the same table of hosts, so every rank makes the same choice:
- all ranks on one host: the collectives use shared memory as memory (`algorithms.host`);
- several hosts with the same number of ranks each: hierarchical, shared memory inside a
  host and one ring across hosts per local rank;
- hosts with different numbers of ranks: the flat ring.
Wherever the flat ring spans hosts (the collectives that are not hierarchical take it too),
its neighbours on one host are joined by shared-memory links, not sockets. The world
group's segment also holds a link between every two ranks of the host, which send/recv
take. Three rounds over the group's TCP ring make it all or nothing: when a rank cannot
create or map the segment, or make or reach its wake-up sockets, every rank of the group
keeps TCP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ... import environment, native
from ...transport import shm
from ...transport.endpoint import Endpoint
from ...transport.link import Link

__all__ = ["Sharing", "share", "too_many"]

log = logging.getLogger("ringcomm")

# The first round carries a wake-up directory's path in this many int64 words (a socket's
# path holds at most 104 bytes on macOS, 108 on Linux).
_WAKE_PATH_WORDS = 13


@dataclass
class Sharing:
    """What the set-up made: the host's segment and links, and the layout it found."""

    shared: shm.Shared | None  # None: the only rank of its host in an uneven layout
    local: list[int]  # the group ranks of this host, in order
    p2p: int  # the link set of send/recv (the world group's), or 0
    neighbours: bool  # the ring spans hosts and has neighbours on this host (link set p2p)
    even: bool  # every host has as many ranks
    hosts: dict[str, list[int]]  # group ranks by host
    links: dict[tuple[int, int], Link]  # (local rank, link set): every link made
    # Whether every rank of the group runs the compiled core: the host's slot-or-chunked choice
    # depends on it, and every rank must make the same choice.
    native: bool


def too_many(count: int) -> str | None:
    """Return why `count` ranks of one host cannot share a segment, or None when they can."""
    if count > shm.MAX_LOCAL_RANKS:
        return (f"{count} ranks on one host are more than the {shm.MAX_LOCAL_RANKS} a segment "
                "takes")
    return None


def share(ep: Endpoint, members: list[int], rank: int, gid: int, world: bool, label: str,
          host_of: list[str], peer: Callable[[int], str], cores: int,
          setup_round: Callable[[np.ndarray], np.ndarray]) -> Sharing | None:
    """Share memory with this group's ranks on this host, where the layout allows (see the
    module's docstring); return None where the group keeps TCP. `host_of[r]` names group
    rank r's host; `setup_round(row)` gathers one int64 row from every rank of the group.
    """
    hosts: dict[str, list[int]] = {}
    for r, h in enumerate(host_of):
        hosts.setdefault(h, []).append(r)
    counts = {len(v) for v in hosts.values()}
    if counts == {1}:
        return None  # one rank per host: TCP everywhere
    even = len(counts) == 1
    p = len(host_of)
    # Ring neighbours on one host (the ring spans hosts): joined by shared-memory links.
    neighbours = len(hosts) > 1 and any(host_of[r] == host_of[(r + 1) % p] for r in range(p))
    # Link sets: the world's for send/recv, one for the ring's neighbours on this host.
    p2p, ring = int(world), int(neighbours)
    links = p2p + ring
    local = hosts[host_of[rank]]
    index, count = local.index(rank), len(local)
    most = max(len(v) for v in hosts.values())
    if links and shm.link_bytes(most, links) == 0:
        # Some host has more ranks than the links' budget holds: no shared-memory links on any
        # host, so that every rank of the group keeps the same lanes.
        if rank == 0:
            log.warning("ringcomm: %d ranks on one host are more than shared-memory links hold "
                        "within %d MiB; send/recv and the ring between them use TCP", most,
                        shm.LINK_BUDGET >> 20)
        neighbours, p2p, links = False, 0, 0
    size, chunk, cap = shm.Shared.size_for(count, staging=even, links=links)
    parts = (ep.key, gid, tuple(members), tuple(local))
    mem = None
    name = wakes = ""
    problem = too_many(count) or ""
    if index == 0 and count > 1 and not problem:
        shm.sweep()
        name = shm.segment_name(os.getpid(), *parts)
        try:
            mem = shm.create(name, size)
        except OSError as e:
            problem = f"could not create {size / 2**20:.1f} MiB of shared memory: {e}"
        else:
            try:
                wakes = shm.wake_directory()
            except OSError as e:
                problem = f"could not create a private directory for wake-ups: {e}"
    # The first round carries every rank's pid and whether it is ready, and from the first
    # rank of a host the path of its private wake-up directory.
    path = os.fsencode(wakes)
    if len(path) > 8 * _WAKE_PATH_WORDS:
        problem, path = f"the temporary directory's path {wakes!r} is too long for socket " \
            "names: set TMPDIR to a shorter one", b""
    words = np.frombuffer(path.ljust(8 * _WAKE_PATH_WORDS, b"\0"), dtype=np.int64)
    table = setup_round(np.concatenate(
        [np.array([os.getpid(), 0 if problem else 1, int(native.CORE is not None)],
                  dtype=np.int64), words]))
    pids = [int(table[r, 0]) for r in local]
    shared = None
    links_to: dict[tuple[int, int], Link] = {}
    if table[:, 1].all() and count > 1:
        try:
            if index != 0:
                name = shm.segment_name(pids[0], *parts)
                mem = shm.attach(name, size)
                wakes = os.fsdecode(table[local[0], 3:].tobytes().rstrip(b"\0"))
                shm.check_wake_directory(wakes)
            gone = [pid for pid in pids if not shm.alive(pid)]
            if gone:
                problem = f"the processes {gone} of this host's ranks are not visible here"
            else:
                assert mem is not None
                shared = shm.Shared(mem, wakes, index, count, chunk, pids, ep.timeout, count <= cores,
                                    lambda j: peer(local[j]), ep.raise_if_aborted, cap, links)
                # Every link this rank takes, made (and its wake-ups bound) before the
                # second round, so that a failure leaves the whole group on TCP.
                if p2p:
                    for j in range(count):
                        if j != index:
                            links_to[j, 0] = shared.link(j)
                if neighbours:  # the ring's neighbours, and all_to_all's pairs on this host
                    for j in range(count):
                        if j != index:
                            links_to[j, p2p] = shared.link(j, p2p)
        except OSError as e:
            problem = f"could not map the shared memory {name}: {e}"
    ok = count == 1 or (not problem and shared is not None)
    done = setup_round(np.array([1 if ok else 0], dtype=np.int64))
    if index == 0 and name:
        shm.unlink(name)  # every local rank has mapped it (or given up): the name can go
    if done.all():
        # Every wake-up socket is bound: connect to them, then no name is needed. A third
        # round (every rank of the group takes it) keeps the directory until every local
        # rank has connected.
        if shared is not None:
            try:
                shared.join()
            except OSError as e:
                problem = f"could not reach this host's ranks' wake-up sockets: {e}"
        done = setup_round(np.array([0 if problem else 1], dtype=np.int64))
    if index == 0 and wakes:
        shm.remove_wake_directory(wakes)
    if problem:
        log.warning("ringcomm rank %d: %s; the %s group uses TCP (give /dev/shm more room, "
                    "e.g. docker --shm-size, or set %s=tcp to skip shared memory)",
                    ep.rank, problem, label, environment.TRANSPORT)
    if not done.all():
        if shared is not None:
            shared.close()
        elif mem is not None:
            mem.close()
        return None
    return Sharing(shared, local, p2p, neighbours, even, hosts, links_to,
                   bool(table[:, 2].all()))
