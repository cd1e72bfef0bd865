"""A group's links: its lanes around the ring, and a link to every other rank (made on use).

Rank r holds one link per lane to its right neighbour (which it opened) and one from its
left neighbour (which that neighbour opened): TCP connections, or one shared-memory link
per neighbour on this host (`replace`). A group that needs direct exchanges (recursive
doubling, all_to_all) also gets a link to every other rank: a shared-memory link of the
ring's set to a rank of this host, else a TCP connection opened by the lower group rank.
"""

from __future__ import annotations

from collections.abc import Callable

from ...transport.endpoint import Endpoint
from ...transport.handshake import Hello, Kind
from ...transport.link import Link
from ...transport.link import path as link_path
from ...transport.tcp import TcpLink

__all__ = ["RingLinks"]


class RingLinks:
    """The links of one rank of one group: `right[i]` and `left[i]` are lane i's."""

    def __init__(self, ep: Endpoint, members: list[int], gid: int, label: str,
                 peer: Callable[[int], str]) -> None:
        self._ep = ep
        self._members = members
        self._rank = members.index(ep.rank)
        self._gid = gid
        self._label = label
        self._peer = peer
        self.right: list[Link] = []
        self.left: list[Link] = []
        self.lanes = min(len(ep.addrs[w]) for w in members)
        self._pairs: dict[int, Link] | None = None
        # Shared-memory links to this host's ranks of the group, by group rank (the ring's set).
        self.local: dict[int, Link] = {}
        self._paths: dict[tuple, str] = {}

    def connect(self, deadline: float) -> None:
        """Open this rank's lanes to its right neighbour and take those from its left; raise
        the RingcommError of a neighbour that does not come."""
        ep, r, p = self._ep, self._rank, len(self._members)
        right, left = self._members[(r + 1) % p], self._members[(r - 1) % p]
        self.right = [TcpLink(ep.connect(right, Hello(Kind.RING, ep.rank, self._gid, c),
                                         deadline, c), self._peer((r + 1) % p), ep.timeout)
                      for c in range(self.lanes)]
        self.left = [TcpLink(ep.take(Kind.RING, left, self._gid, c, deadline,
                                     f"{self._label} set-up"), self._peer((r - 1) % p),
                             ep.timeout)
                     for c in range(self.lanes)]

    def one_lane(self) -> None:
        """Keep lane 0 alone (a shared-memory link is one lane)."""
        for extra in self.right[1:] + self.left[1:]:
            extra.close()
        self.right, self.left, self.lanes = self.right[:1], self.left[:1], 1

    def replace(self, side: str, link: Link) -> None:
        """Take `link` for lane 0 to the `side` ("right" or "left") neighbour."""
        links = self.right if side == "right" else self.left
        links[0].close()
        links[0] = link

    def tcp_pair(self) -> tuple[TcpLink, TcpLink] | None:
        """Return lane 0 both ways where both are TCP connections, else None."""
        right, left = self.right[0], self.left[0]
        if isinstance(right, TcpLink) and isinstance(left, TcpLink):
            return right, left
        return None

    def path(self, algorithm: str) -> str:
        """Return the path name of `algorithm` over lane 0: tcp-, shm- or mixed-."""
        key = (algorithm, id(self.right[0]), id(self.left[0]))
        name = self._paths.get(key)
        if name is None:
            name = self._paths[key] = link_path(self.right[:1] + self.left[:1], algorithm)
        return name

    def pairs(self, deadline: float) -> dict[int, Link]:
        """Return a link to every other rank of the group, made on first use."""
        if self._pairs is not None:
            return self._pairs
        ep, r = self._ep, self._rank
        pairs: dict[int, Link] = {}
        for q, w in enumerate(self._members):
            if q == r:
                continue
            if q in self.local:
                pairs[q] = self.local[q]
            elif r < q:
                s = ep.connect(w, Hello(Kind.PAIR, ep.rank, self._gid), deadline)
                pairs[q] = TcpLink(s, self._peer(q), ep.timeout)
            else:
                s = ep.take(Kind.PAIR, w, self._gid, 0, deadline,
                            f"{self._label} all_to_all set-up")
                pairs[q] = TcpLink(s, self._peer(q), ep.timeout)
        self._pairs = pairs
        return pairs

    def shutdown(self) -> None:
        """Wake every thread that waits on a lane (a failure ends the call)."""
        for link in self.right + self.left:
            link.shutdown()
