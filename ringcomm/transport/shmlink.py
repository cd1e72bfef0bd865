"""A link between two ranks of one host: a channel each way in their shared segment.
"""

from __future__ import annotations

import select
import socket
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import native
from ..errors import PeerAbortedError, PeerError
from .link import Link, spin_budget, wait
from .segment import (
    LINE,
    LIVENESS_SECONDS,
    acquire,
    alive,
    await_reason,
    bound,
    connected,
    full_fence,
    release,
    wake,
    wake_address,
)

if TYPE_CHECKING:
    from .shared import Shared

__all__ = ["ShmLink"]


class ShmLink(Link):
    """A link between two ranks of one host: a channel each way in their shared segment.

    Each end writes its own line of a channel: the sender its `head` (bytes
    written so far) and its sleeping flag, the receiver its `tail` (bytes read)
    and its sleeping flag. Counters only grow (64 bits never wrap), so
    `head - tail` is what the channel holds.
    """

    kind = "shm"

    def __init__(self, sh: Shared, j: int, k: int = 0) -> None:
        super().__init__(sh.names(j), sh.timeout)
        self.sh = sh
        self.j = j
        self.cap = sh.cap
        self._mask = sh.cap - 1
        # Bytes moved per step: a quarter of the channel, so that the receiver copies one
        # piece out while the sender copies the next one in.
        self._piece = max(1, sh.cap // 4)
        self._mv = memoryview(sh.mem)
        self._q = sh.words
        out, inn = sh.channel_at(sh.index, j, k), sh.channel_at(j, sh.index, k)
        # Words: the sender's line holds head and its sleeping flag, the receiver's tail and its.
        self._out_head, self._out_sleep = out // 8, out // 8 + 1
        self._out_tail, self._out_peer_sleep = (out + LINE) // 8, (out + LINE) // 8 + 1
        self._in_head, self._in_peer_sleep = inn // 8, inn // 8 + 1
        self._in_tail, self._in_sleep = (inn + LINE) // 8, (inn + LINE) // 8 + 1
        self._out_data, self._in_data = out + 2 * LINE, inn + 2 * LINE
        self._spin = sh.spin
        self.spin = self._spin  # the short wait of a receive through the core (its spin part)
        self._gone = sh.gone_at[j]
        self._next_live = 0.0
        self._shut = False  # set by shutdown: every wait on the link fails from then on
        self._out, self._in = out, inn
        # Wake-up sockets: one for a sender waiting for room, one for a receiver waiting for data.
        me, peer = sh.index, j
        self._names = [wake_address(sh.wakes, _link_tag(k, me, peer, write))
                       for write in (True, False)]
        self._socks = [bound(name) for name in self._names]
        # Where the other end waits: for data (woken by our sends), for room (by our receives).
        self._peer_names = [wake_address(sh.wakes, _link_tag(k, peer, me, write))
                            for write in (False, True)]
        # Connected in `join`: to the peer's reader and writer, and to our own two (shutdown).
        self._to_reader: socket.socket | None = None
        self._to_writer: socket.socket | None = None
        self._to_self: list[socket.socket] = []
        self.core: Any = None  # the compiled core's end, made in `join`

    def join(self) -> None:
        """Connect to the wake-up sockets of both ends (every one is bound by now)."""
        self._to_reader, self._to_writer = (connected(n) for n in self._peer_names)
        self._to_self = [connected(n) for n in self._names]
        # The compiled core's end of the same channels (whole small messages), where it is built.
        if native.CORE is not None:
            self.core = native.CORE.Channel(self.sh.mem, self._out, self._in, self.cap,
                                            self._to_reader.fileno(), self._to_writer.fileno())

    # -- moving bytes ----------------------------------------------------------------------

    def send_some(self, data: memoryview, op: str) -> int:
        q = self._q
        head = q[self._out_head]  # this end's own word: only it writes there
        tail = q[self._out_tail]  # the peer's word: checked before it is used
        if tail > head or head - tail > self.cap:
            raise PeerError(self._corrupt(op, head, tail))
        n = min(self.cap - (head - tail), len(data), self._piece)
        if n <= 0:
            return 0
        acquire()  # the receiver's reads of that room are done
        pos = head & self._mask
        first = min(n, self.cap - pos)
        at = self._out_data + pos
        self._mv[at:at + first] = data[:first]
        if n > first:
            self._mv[self._out_data:self._out_data + n - first] = data[first:n]
        release()
        q[self._out_head] = head + n
        full_fence()
        if q[self._out_peer_sleep]:
            wake(self._to_reader)
        return n

    def recv_some(self, view: memoryview, op: str) -> int:
        q = self._q
        tail = q[self._in_tail]  # this end's own word
        head = q[self._in_head]  # the peer's word: checked before it is used
        if tail > head or head - tail > self.cap:
            raise PeerError(self._corrupt(op, head, tail))
        n = min(head - tail, len(view), self._piece)
        if n <= 0:
            return 0
        acquire()
        pos = tail & self._mask
        first = min(n, self.cap - pos)
        at = self._in_data + pos
        view[:first] = self._mv[at:at + first]
        if n > first:
            view[first:n] = self._mv[self._in_data:self._in_data + n - first]
        release()  # the reads are done before the sender may write there again
        q[self._in_tail] = tail + n
        full_fence()
        if q[self._in_peer_sleep]:
            wake(self._to_writer)
        return n

    def _corrupt(self, op: str, head: int, tail: int) -> str:
        return (f"{op}: the shared-memory link with {self.peer} holds counters no rank writes "
                f"(head {head}, tail {tail}, ring of {self.cap} bytes): its memory was corrupted")

    def send(self, data: memoryview | bytes, op: str) -> None:
        self._all(memoryview(data).cast("B"), op, True)

    def recv_into(self, view: memoryview, op: str) -> None:
        self._all(view, op, False)

    def _all(self, view: memoryview, op: str, write: bool) -> None:
        """Move all of `view` (send it with `write`, else fill it); the deadline runs from now."""
        move = self.send_some if write else self.recv_some
        done, n = 0, len(view)
        start = time.perf_counter()
        spin = spin_budget(self._spin)
        while done < n:
            k = move(view[done:], op)
            done += k
            if not k:
                wait([(self, write)], op, spin, start, partial(self._late, write, done, n))

    def _late(self, write: bool, done: int, n: int) -> str:
        """Say what the peer did not do in time."""
        return (f"{self.peer} {'took' if write else 'sent'} {done} of {n} bytes within "
                f"{self.timeout:g} s (shared memory)")

    # -- waiting -----------------------------------------------------------------------------

    def ready(self, write: bool) -> bool:
        q = self._q
        if write:
            return q[self._out_head] - q[self._out_tail] < self.cap
        return q[self._in_head] != q[self._in_tail]

    def arm(self, write: bool) -> bool:
        self._q[self._out_sleep if write else self._in_sleep] = 1
        full_fence()
        return self.ready(write)

    def disarm(self, write: bool) -> None:
        self._q[self._out_sleep if write else self._in_sleep] = 0
        sock = self._socks[0 if write else 1]
        try:
            while sock.recv(64):
                pass
        except OSError:
            pass

    def readiness(self, write: bool) -> tuple[int, int]:
        return self._socks[0 if write else 1].fileno(), select.POLLIN

    def rechecks(self) -> bool:
        return True

    def check(self, op: str) -> None:
        self.sh.check()
        if self._shut:
            raise PeerError(f"{op}: the link to {self.peer} was shut down after a failure")
        if self._q[self._gone]:
            await_reason(self.sh.check)
            raise PeerAbortedError(f"{op}: {self.peer} on this host left the job (it failed or "
                                   "gave up; its own error says why)")
        now = time.perf_counter()
        if now >= self._next_live:
            self._next_live = now + LIVENESS_SECONDS
            pid = self.sh.pids[self.j]
            if not alive(pid):
                raise PeerError(f"{op}: {self.peer} (pid {pid}) on this host exited")

    def shutdown(self) -> None:
        self._shut = True
        if self.core is not None:
            self.core.shut()
        for s in self._to_self:  # a waiter of this process wakes and fails at once
            wake(s)

    def close(self) -> None:
        if self.core is not None:
            self.core.close()
        try:
            self._mv.release()
        except BufferError:
            pass  # a view of it is still alive; the mapping goes with the process
        for s in [*self._socks, *self._to_self, self._to_reader, self._to_writer]:
            if s is not None:
                s.close()


def _link_tag(k: int, me: int, peer: int, write: bool) -> str:
    """Return the wake-up socket tag of local rank `me`'s end of its link `k` to `peer`."""
    return f"{k}.{me}.{peer}{'w' if write else 'r'}"
