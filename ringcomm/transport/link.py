"""Links: what the ring's algorithms send and receive through.

A link is a connection between two ranks that carries a byte stream each way.
Two kinds implement it:

- `tcp.TcpLink`: a socket, between hosts (or on one host with
  ``RINGCOMM_TRANSPORT=tcp``);
- `shm.ShmLink`: two ring buffers in the host's shared segment, between ranks
  of one host.

The algorithms (the ring's latency path and pipelined path, broadcast,
barrier, split, send/recv) use only what is here, so one ring may run over
both kinds at once: a ring whose neighbours share a host on one side and sit
on another host on the other.

What a link gives:

- `send` / `recv_into`: all of a buffer, blocking; the wait ends `timeout`
  seconds after it began (CommTimeoutError), a peer that went away is a
  PeerError naming it;
- `send_some` / `recv_some`: as much as fits or has come, never blocking, for
  the non-blocking `exchange`;
- readiness: `ready` says without waiting whether the link may move, `arm`
  prepares a sleep and says whether it is ready already, `readiness` is the
  descriptor and events `select.poll` watches while it is not, `disarm` ends
  it;
- `check`: raise when the peer is known to be gone (shared memory has no
  connection to reset, so it looks at the peer's process and region);
- `shutdown` (wake every thread blocked on it, for an abort) and `close`.

Every message starts with a call header (`transport.header`); the receiver
compares it with its own call before it reads any data, on either kind.
"""

from __future__ import annotations

import os
import select
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from ..errors import CommTimeoutError
from .net import exchange as socket_exchange

__all__ = ["Link", "exchange", "path", "wait"]

# A wait on links that `rechecks` (shared memory) yields the core until this much time has
# passed before it sleeps, and wakes at least every RECHECK_SECONDS to check the peer and the job.
YIELD_SECONDS = 200e-6
RECHECK_SECONDS = 0.01
_MAIN = threading.main_thread()


def spin_budget(seconds: float) -> float:
    """Return how long the calling thread may poll before it yields: `seconds` on the main
    thread, none on a background one (async_op), whose polling would only take the core and
    the interpreter from the caller's compute."""
    return seconds if threading.current_thread() is _MAIN else 0.0


class Link(ABC):
    """One rank's end of a connection to another rank."""

    kind = ""
    """"tcp" or "shm": the first half of the path names in the trace and in `ringcomm bench`."""

    def __init__(self, peer: str, timeout: float) -> None:
        self.peer = peer
        """Who is at the other end, for messages: 'rank 3 (10.0.0.2:5000)'."""
        self.timeout = timeout
        """Every wait on the link ends this many seconds after it began."""

    @abstractmethod
    def send(self, data: memoryview | bytes, op: str) -> None:
        """Send all of `data`."""

    @abstractmethod
    def recv_into(self, view: memoryview, op: str) -> None:
        """Fill all of `view`."""

    @abstractmethod
    def send_some(self, data: memoryview, op: str) -> int:
        """Send what goes without waiting; return how many bytes (0 when none)."""

    @abstractmethod
    def recv_some(self, view: memoryview, op: str) -> int:
        """Take what has come, up to len(view), without waiting; return how many bytes."""

    @abstractmethod
    def readiness(self, write: bool) -> tuple[int, int]:
        """Return the descriptor and the events `select.poll` watches while this link has no
        room (`write`) or no data."""

    @abstractmethod
    def ready(self, write: bool) -> bool:
        """Return, without waiting or arming, whether the link has room (`write`) or data."""

    @abstractmethod
    def arm(self, write: bool) -> bool:
        """Prepare a wait for room to send (`write`) or for data; return True when ready now."""

    @abstractmethod
    def disarm(self, write: bool) -> None:
        """End a wait prepared by `arm`."""

    @abstractmethod
    def check(self, op: str) -> None:
        """Raise when the peer is known to be gone or the job stopped."""

    @abstractmethod
    def rechecks(self) -> bool:
        """Return whether a wait must wake every RECHECK_SECONDS to `check` this link."""

    @abstractmethod
    def shutdown(self) -> None:
        """Wake every thread blocked on this link (the job is aborting)."""

    @abstractmethod
    def close(self) -> None:
        """Release the link."""


def path(links: list[Link], algorithm: str) -> str:
    """Return the path name of `algorithm` over `links`: tcp-..., shm-..., or mixed-... ."""
    kinds = {link.kind for link in links}
    return f"{kinds.pop() if len(kinds) == 1 else 'mixed'}-{algorithm}"


def exchange(out: Link, data: memoryview, inn: Link, view: memoryview, header: int,
             check: Callable[[memoryview], None], *, op: str, spin: float = 0.0) -> None:
    """Send `data` on `out` and fill `view` from `inn`, calling `check` on its first `header` bytes.

    Two ranks that send each other more than their links hold at once would
    both block in a plain send. Here the send never blocks: while it cannot go
    on, this thread takes what has arrived, and it sleeps only when neither link
    can move. Each wait ends `timeout` seconds after the last progress.

    Two TCP links take the socket-level loop of `net.exchange`; any other pair
    (shared memory, or one of each) this generic loop.
    """
    if out.kind == "tcp" and inn.kind == "tcp":
        return socket_exchange(out.sock, data, inn.sock, view, header, check,  # type: ignore[attr-defined]
                               inn.timeout, peer_out=out.peer, peer_in=inn.peer, op=op, spin=spin)
    sent, got, n, m = 0, 0, len(data), len(view)
    checked = False
    while sent < n or got < m:
        moved = False
        if sent < n:
            k = out.send_some(data[sent:], op)
            sent += k
            moved = k > 0
        if got < m:
            k = inn.recv_some(view[got:], op)
            if k:
                got += k
                moved = True
                if not checked and got >= header:
                    check(view[:header])
                    checked = True
        if not moved:
            wait(([(out, True)] if sent < n else []) + ([(inn, False)] if got < m else []),
                 op, spin)
    if not checked:
        check(view[:header])


def wait(ends: list[tuple[Link, bool]], op: str, spin: float = 0.0, start: float | None = None,
         late: Callable[[], str] | None = None) -> None:
    """Wait until any of `ends` (link, for writing) may move; raise on the deadline.

    First a short `spin` asks the links without sleeping; then, where a
    link `rechecks` (shared memory), the core is yielded until YIELD_SECONDS have passed, so
    that more ranks than cores never starve each other; then the wait sleeps in poll(),
    waking every RECHECK_SECONDS to `check` those links. CommTimeoutError comes the links'
    timeout after `start` (default: now), its message `late()` where given.
    """
    now = time.perf_counter()
    start = now if start is None else start

    def ready() -> bool:
        return any(link.ready(write) for link, write in ends)

    spin_until = now + spin
    while now < spin_until:
        if ready():
            return
        now = time.perf_counter()
    recheck = any(link.rechecks() for link, _ in ends)
    if recheck:
        yield_until = now + YIELD_SECONDS
        while now < yield_until:
            os.sched_yield()
            if ready():
                return
            now = time.perf_counter()
    timeout = max(link.timeout for link, _ in ends)
    poller = select.poll()
    for link, write in ends:
        poller.register(*link.readiness(write))
    while True:
        try:
            ready_now = False
            for link, write in ends:
                ready_now = link.arm(write) or ready_now
            if ready_now:
                return
            left = start + timeout - time.perf_counter()
            if left <= 0:
                if late is not None:
                    raise CommTimeoutError(f"{op}: {late()}")
                names = " and ".join(sorted({link.peer for link, _ in ends}))
                raise CommTimeoutError(f"{op}: nothing moved to or from {names} within "
                                       f"{timeout:g} s")
            if poller.poll(1000 * (min(left, RECHECK_SECONDS) if recheck else left)):
                return
        finally:
            for link, write in ends:
                link.disarm(write)
            for link, _ in ends:
                link.check(op)
