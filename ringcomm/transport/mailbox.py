"""Point-to-point state of one process, with one owner: per peer a link each way, a wire lock
each way, and a message counter each way.

Messages are numbered per ordered pair of world ranks ("out" to a peer, "in" from it), so a
receiver knows which message it waits for and the watch can tell a send that nobody
receives. One message at a time per link and way (its wire lock): calls of two groups may
run at once (async_op). A rank of this host is reached through its shared-memory link
(`local`, set by the world group's set-up); any other through a TCP connection made on
first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .link import Link

__all__ = ["Mailbox"]


class Mailbox:
    """`connect(dst)` opens a sending link to world rank dst; `take(src, what)` waits for
    the link world rank src opened to this process."""

    def __init__(self, connect: Callable[[int], Link], take: Callable[[int, str], Link]) -> None:
        self._connect = connect
        self._take = take
        self.lock = threading.Lock()  # guards the counters (and the maps below)
        self.local: dict[int, Link] = {}  # shared-memory links to the ranks of this host
        self._out: dict[int, Link] = {}
        self._in: dict[int, Link] = {}
        self._wire: dict[tuple[str, int], threading.Lock] = {}
        self._seqs: dict[tuple[str, int], int] = {}

    def out(self, dst: int) -> Link:
        """Return this process's sending link to world rank `dst`."""
        link = self.local.get(dst) or self._out.get(dst)
        if link is None:
            link = self._out[dst] = self._connect(dst)
        return link

    def into(self, src: int, what: str) -> Link:
        """Return the link world rank `src` sends on to this process (`what` names the call)."""
        link = self.local.get(src) or self._in.get(src)
        if link is None:
            link = self._in[src] = self._take(src, what)
        return link

    def wire_lock(self, way: str, peer: int) -> threading.Lock:
        """Return the lock that keeps one message whole on the `way` ("out"/"in") link."""
        with self.lock:
            return self._wire.setdefault((way, peer), threading.Lock())

    def next_seq(self, key: tuple[str, int]) -> int:
        """Return the next message number of `key` (way, world rank); hold `lock`."""
        self._seqs[key] = self._seqs.get(key, 0) + 1
        return self._seqs[key]

    def counts(self, peer: int) -> tuple[int, int]:
        """Return (messages this process started to send to `peer`, receives it started from it)."""
        return self._seqs.get(("out", peer), 0), self._seqs.get(("in", peer), 0)

    def sent_to(self) -> dict[int, int]:
        """Return {world rank: messages this process started to send there}."""
        return {r: n for (way, r), n in list(self._seqs.items()) if way == "out"}
