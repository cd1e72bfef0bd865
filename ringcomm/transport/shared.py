"""This rank's view of its host's segment: regions, posting and waiting (`shm` explains).
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import native
from ..errors import CommTimeoutError, PeerAbortedError, PeerError
from .link import YIELD_SECONDS, spin_budget
from .segment import (
    LINE,
    LIVENESS_SECONDS,
    SLEEP_SECONDS,
    SLOT_BYTES,
    SPIN_SECONDS,
    acquire,
    alive,
    await_reason,
    bound,
    chunk_bytes,
    connected,
    full_fence,
    link_bytes,
    region_bytes,
    release,
    wake,
    wake_address,
)
from .shmlink import ShmLink

__all__ = ["Shared"]

class Shared:
    """This rank's view of its host's segment: regions, posting and waiting.

    `index` is this rank's place among the `count` local ranks; `pids` their
    process ids (for the liveness check); `names(j)` says who local rank j is
    in error messages; `check()` raises when the job was aborted.
    """

    def __init__(self, mem: mmap.mmap, wakes: str, index: int, count: int, chunk: int,
                 pids: list[int], timeout: float, spin: bool,
                 names: Callable[[int], str], check: Callable[[], None], cap: int = 0,
                 sets: int = 0) -> None:
        self.mem = mem
        self.wakes = wakes  # the private directory of the wake-up sockets
        self.index = index
        self.count = count
        self.chunk = chunk
        self.cap = cap
        self.sets = sets if cap else 0
        self.pids = pids
        self.timeout = timeout
        self.spin = SPIN_SECONDS if spin else 0.0
        self.names = names
        self.check = check
        self.region = region_bytes(chunk, self.sets * (count - 1), cap)
        self._links: dict[tuple[int, int], ShmLink] = {}
        self.words = memoryview(mem).cast("Q")
        words = self.region // 8
        self._posted_at = [j * words for j in range(count)]
        self._sleep_at = [j * words + 1 for j in range(count)]
        self.gone_at = [j * words + 2 for j in range(count)]
        self._others = [j for j in range(count) if j != index]
        self.posts = int(self.words[self._posted_at[index]])
        raw = np.frombuffer(mem, dtype=np.uint8)
        self._raw = raw
        self.slots = [[raw[j * self.region + LINE + s * SLOT_BYTES:][:SLOT_BYTES]
                       for s in range(2)] for j in range(count)]
        base = LINE + 2 * SLOT_BYTES
        self.halves = [[raw[j * self.region + base + h * chunk:][:chunk] for h in range(2)]
                       for j in range(count)]
        self._wake_to = [wake_address(wakes, j) for j in range(count)]
        self._wake = bound(self._wake_to[index])
        self._wake_out: list[socket.socket | None] = [None] * count  # connected in `join`
        self._joined = False
        # The compiled core's view of the same memory (small calls), where it is built: made
        # in `join`, once it can reach the other ranks' wake-ups.
        self.core: Any = None
        # The core's short wait: the spin (when it is on), then yielding until YIELD_SECONDS.
        self.short_wait = (self.spin, YIELD_SECONDS)

    def join(self) -> None:
        """Connect to the other local ranks' wake-up sockets, and the links' to theirs.

        Call once every local rank has made its Shared and links (a round of the set-up):
        from then on nothing here needs a name, and the directory can go.
        """
        self._joined = True
        for j in self._others:
            self._wake_out[j] = connected(self._wake_to[j])
        for link in self._links.values():
            link.join()
        if native.CORE is not None:
            self.core = native.CORE.Segment(
                self.mem, self.index, self.count, self.region, LINE, SLOT_BYTES,
                [-1 if s is None else s.fileno() for s in self._wake_out])

    @classmethod
    def size_for(cls, count: int, staging: bool = True, links: int = 0
                 ) -> tuple[int, int, int]:
        """Return (segment bytes, chunk bytes, link channel bytes) for `count` local ranks.

        Without `staging` the segment has no staging halves (a group whose collectives
        take the ring, over links); `links` is the number of links between every two
        local ranks (one set for send/recv, one for a ring).
        """
        chunk = chunk_bytes(count) if staging else 0
        cap = link_bytes(count, links) if links else 0
        return region_bytes(chunk, links * (count - 1), cap) * count, chunk, cap

    def channel_at(self, src: int, dst: int, k: int = 0) -> int:
        """Return the offset of set `k`'s channel from local rank `src` to local rank `dst`."""
        c = k * (self.count - 1) + (dst if dst < src else dst - 1)
        return src * self.region + LINE + 2 * SLOT_BYTES + 2 * self.chunk + c * (2 * LINE + self.cap)

    def link(self, j: int, k: int = 0) -> ShmLink:
        """Return this rank's link of set `k` to local rank `j` (made on first use)."""
        link = self._links.get((j, k))
        if link is None:
            assert k < self.sets and j != self.index, "this segment has no such link"
            assert not self._joined, "every link is made before `join`: its wake-ups need the " \
                "directory, which is gone after it"
            link = self._links[j, k] = ShmLink(self, j, k)
        return link

    # -- posting and waiting ---------------------------------------------------------------

    def post(self) -> int:
        """Publish this rank's region (everything written before); return the post number."""
        q = self.words
        release()
        self.posts += 1
        q[self._posted_at[self.index]] = self.posts
        full_fence()
        for j in self._others:
            if q[self._sleep_at[j]]:
                wake(self._wake_out[j])
        return self.posts

    def wait(self, what: str, target: int | None = None, only: int | None = None) -> None:
        """Wait until every other local rank (or just `only`) posted `target` (default: ours).

        Raise CommTimeoutError after `timeout` seconds from the start, PeerError when a
        waited-for rank's process is gone, and whatever `check` raises on an abort.
        """
        q = self.words
        at = self._posted_at
        goal = self.posts if target is None else target
        pending = [j for j in (self._others if only is None else [only]) if q[at[j]] < goal]
        if not pending:
            acquire()
            return self.abandoned(what)
        start = time.perf_counter()
        # No polling for a call run in the background (async_op): the caller computes meanwhile.
        spin_until = start + spin_budget(self.spin)
        while pending and time.perf_counter() < spin_until:
            pending = [j for j in pending if q[at[j]] < goal]
        yield_until = start + YIELD_SECONDS
        while pending and time.perf_counter() < yield_until:
            os.sched_yield()
            pending = [j for j in pending if q[at[j]] < goal]
        if pending:
            self._sleep(pending, goal, start, what)
        acquire()
        self.abandoned(what)

    def wait_rest(self, what: str, start: float) -> None:
        """Go on with a wait for our last post that began at `start` (perf_counter) and has
        spun and yielded already (the compiled core's short wait): block until every local
        rank has posted, within the deadline from `start`.
        """
        q, at, goal = self.words, self._posted_at, self.posts
        pending = [j for j in self._others if q[at[j]] < goal]
        if pending:
            self._sleep(pending, goal, start, what)
        acquire()

    def abandon(self) -> None:
        """Mark this rank as gone from the job: a late peer must not complete a call with it."""
        try:
            self.words[self.gone_at[self.index]] = 1
        except ValueError:
            return  # closed already
        full_fence()

    def abandoned(self, what: str) -> None:
        """Raise when a local peer has left the job (failed or gave up), even after it posted."""
        q, gone = self.words, self.gone_at
        for j in self._others:
            if q[gone[j]]:
                await_reason(self.check)
                raise PeerAbortedError(f"{what}: {self.names(j)} on this host left the job "
                                       "(it failed or gave up; its own error says why)")
    def _sleep(self, pending: list[int], goal: int, start: float, what: str) -> None:
        q, at, me = self.words, self._posted_at, self._sleep_at[self.index]
        deadline = start + self.timeout
        next_live = start + LIVENESS_SECONDS
        while True:
            q[me] = 1
            full_fence()
            pending = [j for j in pending if q[at[j]] < goal]
            if not pending:
                q[me] = 0
                return
            self.check()
            now = time.perf_counter()
            if now >= next_live:
                next_live = now + LIVENESS_SECONDS
                self._liveness(pending, what)
            if now >= deadline:
                q[me] = 0
                who = ", ".join(self.names(j) for j in pending)
                raise CommTimeoutError(f"{what}: {who} sent nothing within {self.timeout:g} s "
                                       "(shared memory)")
            select.select([self._wake], [], [], min(SLEEP_SECONDS, deadline - now))
            q[me] = 0
            try:
                while self._wake.recv(64):
                    pass
            except OSError:
                pass

    def _liveness(self, pending: list[int], what: str) -> None:
        for j in pending:
            if not alive(self.pids[j]):
                raise PeerError(f"{what}: {self.names(j)} (pid {self.pids[j]}) on this host "
                                "exited during the call")

    def close(self) -> None:
        """Release this rank's mapping and wake-up socket (the name is long gone)."""
        for link in self._links.values():
            link.close()
        if self.core is not None:
            self.core.close()
        self._wake.close()
        for s in self._wake_out:
            if s is not None:
                s.close()
        self.words.release()
        del self.slots, self.halves, self._raw
        try:
            self.mem.close()
        except BufferError:
            pass  # an array still views it; the mapping goes with the process


