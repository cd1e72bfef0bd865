"""What each rank is doing, asked of it while a call waits: deadlocks, stalls and frozen peers.

The calling thread only records what it does (`Activity`, one tuple store per
call). A watch thread per process looks at that record a few times a second;
while a call has waited a while, it asks the peers what *they* are doing, over
a short authenticated QUERY connection that each rank's listener answers
without involving its calling thread. From the answers it:

- finds point-to-point deadlocks that no header can show, because the two
  sides never exchange a message: a rank in ``recv`` (or a blocked ``send``)
  whose peer is in a collective that needs this rank, without having sent
  (received) the message; two ranks that each wait in ``recv`` for the other,
  or that are each blocked sending to the other. These abort the job with a
  MismatchError on every rank.
- writes a stall report when a call has waited longer than
  RINGCOMM_STALL_SECONDS (default 60): the op, call number, group, the ranks
  that arrived and those that did not, with what each is doing, at growing
  intervals until the deadline.
- remembers the peers that did not answer at all: when the call then reaches
  its deadline, the error names them (frozen, stopped, or cut off) instead of
  the live neighbour that was waiting on them too.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from .handshake import Hello, Kind, client, read_exact
from .net import Address, connect

__all__ = ["Activity", "GroupInfo", "Status", "Watch"]

log = logging.getLogger("ringcomm")
_now = time.monotonic
_MAIN = threading.main_thread()

# The calling thread's record is read this often.
TICK = 0.2
# A call that has waited this long (capped at a quarter of the deadline) has its
# point-to-point peer asked whether the two ranks deadlock.
P2P_CHECK_AFTER = 0.5
QUERY_SECONDS = 2.0
_REPLY_LIMIT = 1 << 16


class Activity(NamedTuple):
    """One call of this process, as its calling thread records it (a tuple: it is made per call)."""

    op: str
    group: int
    seq: int  # the call number in its group; for send/recv the message number on the pair
    peer: int  # the world rank of a send/recv's other side, else -1
    started: float  # time.monotonic() when the call began, or when it ended if not busy
    busy: bool


@dataclass(frozen=True)
class GroupInfo:
    """A group this process belongs to: its label and members (world ranks, in group order)."""

    label: str
    members: tuple[int, ...]


@dataclass(frozen=True)
class Status:
    """What a peer said it is doing (from its answer to a query)."""

    rank: int
    op: str
    group: int
    seq: int
    peer: int
    busy: bool
    seconds: float  # in the call (busy) or since the last one ended
    done: dict[int, int]  # group id -> the last call number it finished there
    sent: int  # messages it sent to the asker
    received: int  # messages it received from the asker
    sent_to: dict[int, int]  # world rank -> messages it sent there
    concurrent: bool = False  # it has a call in flight off its main thread, or several

    def describe(self, groups: dict[int, GroupInfo]) -> str:
        if not self.busy:
            return f"running its program (no call) for {self.seconds:.0f} s"
        if self.op in ("send", "recv"):
            way = "to" if self.op == "send" else "from"
            return f"in {self.op} {way} rank {self.peer} [message #{self.seq}] for {self.seconds:.0f} s"
        label = groups[self.group].label if self.group in groups else f"group {self.group:#x}"
        return f"in {self.op} [call #{self.seq}] of the {label} group for {self.seconds:.0f} s"


class Watch:
    """The watch thread of one process; the Endpoint owns it and answers queries with `status`."""

    def __init__(self, rank: int, addrs: list[list[Address]], key: bytes, timeout: float,
                 abort: Callable[[str], None], counts: Callable[[int], tuple[int, int]],
                 sent_to: Callable[[], dict[int, int]], stall: float) -> None:
        self.rank = rank
        self._addrs = addrs
        self._key = key
        self._timeout = timeout
        self._abort = abort  # abort(reason): a deadlock found; every rank raises MismatchError
        self._counts = counts  # counts(peer) -> (messages sent to it, received from it)
        self._sent_to = sent_to  # sent_to() -> {peer: messages sent to it}
        self._stall = stall
        self.activity = Activity("start", 0, 0, -1, time.monotonic(), False)
        self.busy: dict[int, Activity] = {}  # group id -> its call in flight in this process
        self._background: set[int] = set()  # groups whose call runs off the main thread
        self.groups: dict[int, GroupInfo] = {}
        self.done: dict[int, int] = {}
        self._silent: dict[int, float] = {}  # world rank -> when it first did not answer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if len(addrs) > 1:
            self._thread = threading.Thread(target=self._run, daemon=True, name="ringcomm-watch")
            self._thread.start()

    # -- the calling thread's record ---------------------------------------------------------

    def enter(self, op: str, group: int, seq: int, peer: int = -1) -> None:
        self.begin(Activity(op, group, seq, peer, _now(), True))

    def begin(self, a: Activity) -> None:
        """Record a call that starts (several groups' calls may run at once: async_op)."""
        self.busy[a.group] = a
        if threading.current_thread() is _MAIN:
            self._background.discard(a.group)
        else:
            self._background.add(a.group)
        self.activity = a

    @property
    def concurrent(self) -> bool:
        """Return whether this process runs a call off its main thread, or several at once.

        Then a call that waits says nothing about what the program does next, so the
        deadlock inferences (which assume one caller blocked in one call) are off.
        """
        return bool(self._background) or len(self.busy) > 1

    def leave(self, group: int) -> None:
        """Record that `group`'s call ended, however it ended."""
        a = self.busy.pop(group, None)
        self._background.discard(group)
        if a is None:
            return
        if a.peer < 0:
            self.done[a.group] = a.seq
        if self.activity is a:
            others = list(self.busy.values())
            self.activity = others[-1] if others else Activity(
                a.op, a.group, a.seq, a.peer, _now(), False)

    # -- answering ---------------------------------------------------------------------------

    def status(self, asker: int) -> bytes:
        """Return this process's answer to a query from world rank `asker`."""
        a = self.activity
        sent, received = self._counts(asker)
        return json.dumps({
            "rank": self.rank, "op": a.op, "group": a.group, "seq": a.seq, "peer": a.peer,
            "busy": a.busy, "seconds": round(time.monotonic() - a.started, 3),
            "done": {str(g): s for g, s in self.done.items()}, "sent": sent,
            "received": received, "sent_to": {str(r): n for r, n in self._sent_to().items()},
            "concurrent": self.concurrent,
        }).encode()

    # -- asking ------------------------------------------------------------------------------

    def query(self, dst: int, seconds: float = QUERY_SECONDS) -> Status | None:
        """Ask world rank `dst` what it does; None when it does not answer within `seconds`."""
        deadline = time.monotonic() + seconds
        try:
            s = connect(self._addrs[dst][0], deadline, what=f"rank {dst}", retry=False)
            with s:
                client(s, self._key, Hello(Kind.QUERY, self.rank, 0), deadline)
                n = int.from_bytes(read_exact(s, 4, deadline), "big")
                if n > _REPLY_LIMIT:
                    raise ValueError(f"an answer of {n} bytes")
                raw = json.loads(read_exact(s, n, deadline))
        except Exception:  # any failure means: no answer from that rank
            self._silent.setdefault(dst, time.monotonic())
            return None
        self._silent.pop(dst, None)
        return Status(int(raw["rank"]), str(raw["op"]), int(raw["group"]), int(raw["seq"]),
                      int(raw["peer"]), bool(raw["busy"]), float(raw["seconds"]),
                      {int(g): int(v) for g, v in raw["done"].items()}, int(raw["sent"]),
                      int(raw["received"]), {int(r): int(v) for r, v in raw["sent_to"].items()},
                      bool(raw.get("concurrent", False)))

    def silent(self) -> dict[int, float]:
        """Return the world ranks that did not answer their last query, and since when."""
        return dict(self._silent)

    def peer_name(self, world_rank: int) -> str:
        return f"rank {world_rank} ({self._addrs[world_rank][0]})"

    def blame(self) -> str | None:
        """Return a sentence naming the peers that stopped answering, or None."""
        silent = self.silent()
        if not silent:
            return None
        now = time.monotonic()
        names = ", ".join(f"{self.peer_name(r)} for {now - t:.0f} s" for r, t in sorted(silent.items()))
        return (f"no answer to status queries from {names}: frozen, stopped, or cut off from "
                "the network")

    # -- the thread --------------------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        checked: Activity | None = None
        next_check = 0.0
        next_stall = self._stall
        while not self._stop.wait(TICK):
            a = self.activity
            if not a.busy:
                continue
            if a is not checked:
                checked, next_check, next_stall = a, min(P2P_CHECK_AFTER, self._timeout / 4), self._stall
                self._silent.clear()
            waited = time.monotonic() - a.started
            try:
                if waited >= next_check:
                    next_check = waited + 1.0
                    self._check(a)
                if waited >= next_stall:
                    next_stall *= 2
                    self._report(a, waited)
            except Exception:  # the watch must never take the process down
                log.debug("ringcomm watch check failed", exc_info=True)

    def _check(self, a: Activity) -> None:
        """Look for a deadlock of send/recv against the peer; for collectives, find silent members."""
        if a.op in ("send", "recv"):
            st = self.query(a.peer, min(QUERY_SECONDS, self._timeout / 4))
            if st is not None and self.activity is a:
                reason = self._deadlock(a, st)
                if reason is not None:
                    self._abort(reason)
            return
        info = self.groups.get(a.group)
        if info is None or time.monotonic() - a.started < min(self._stall, self._timeout / 3):
            return
        self._query_all([m for m in info.members if m != self.rank])

    def _deadlock(self, a: Activity, st: Status) -> str | None:
        me, peer = self.rank, a.peer
        mine = f"rank {me} called {a.op} {'from' if a.op == 'recv' else 'to'} rank {peer} [message #{a.seq}]"
        if a.op == "recv" and st.sent >= a.seq:
            return None  # the message was sent: it is on its way
        if st.concurrent or self.concurrent:
            return None  # a caller is free elsewhere (async_op): it may still make the call
        if a.op == "send" and st.received >= a.seq:
            return None
        if st.busy and st.op not in ("send", "recv") and st.group in self.groups \
                and st.seq > self.done.get(st.group, 0):
            label = self.groups[st.group].label
            return (f"{st.op} against {a.op}: {mine}, but rank {peer} called {st.op} [call #{st.seq}] "
                    f"of the {label} group, which needs rank {me}; every rank must make the same "
                    "calls in the same order")
        if a.op == "recv" and st.busy and st.op == "recv":
            return self._recv_cycle(a, st, mine)
        if a.op == "send" and st.busy and st.op == "send" and st.peer == me \
                and self._counts(peer)[1] < st.seq:
            # Neither reads, so neither send can finish once the socket buffers are full.
            return (f"send against send: {mine}, and rank {peer} is blocked sending to rank {me} "
                    f"[message #{st.seq}]: neither receives; one of them must recv first")
        return None

    def _recv_cycle(self, a: Activity, st: Status, mine: str) -> str | None:
        """Follow who waits in recv for whom from the peer on; a cycle back here is a deadlock.

        Each rank of the chain waits for a message that the next has not sent, and
        the next is itself waiting in recv, so nobody can send.
        """
        me = self.rank
        chain = [(a.peer, st)]
        while True:
            rank, cur = chain[-1]
            nxt = cur.peer
            if nxt == me:
                if self._counts(rank)[0] >= cur.seq:
                    return None  # this rank did send it: it is on its way
                break
            if nxt == rank or nxt in (r for r, _ in chain) or len(chain) >= len(self._addrs):
                return None  # a cycle that does not pass here: its own members report it
            st2 = self.query(nxt, min(QUERY_SECONDS, self._timeout / 4))
            if st2 is None or not st2.busy or st2.op != "recv" or st2.sent_to.get(rank, 0) >= cur.seq:
                return None
            chain.append((nxt, st2))
        if len(chain) == 1:
            return (f"recv against recv: {mine}, and rank {a.peer} waits in recv from rank {me} "
                    f"[message #{st.seq}]: each waits for the other; one of them must send first")
        links = ", ".join(f"rank {r} waits in recv from rank {c.peer} [message #{c.seq}]"
                          for r, c in chain)
        return (f"recv cycle: {mine}, {links}: each waits for the next; one of them must send "
                "first")

    def _query_all(self, ranks: list[int]) -> dict[int, Status | None]:
        out: dict[int, Status | None] = {}
        threads = [threading.Thread(target=lambda r=r: out.__setitem__(r, self.query(r)),
                                    daemon=True) for r in ranks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(QUERY_SECONDS + 1)
        return out

    def _report(self, a: Activity, waited: float) -> None:
        """Log one line: what this call waits for, who arrived and who did not."""
        if a.op in ("send", "recv"):
            st = self.query(a.peer)
            what = st.describe(self.groups) if st else "not answering (frozen or cut off?)"
            log.warning("ringcomm: rank %d has waited %.0f s in %s %s rank %d [message #%d]; "
                        "rank %d is %s", self.rank, waited, a.op,
                        "from" if a.op == "recv" else "to", a.peer, a.seq, a.peer, what)
            return
        info = self.groups.get(a.group)
        if info is None:
            return
        answers = self._query_all([m for m in info.members if m != self.rank])
        arrived, missing = [str(self.rank)], []
        for r in info.members:
            if r == self.rank:
                continue
            st = answers.get(r)
            if st is not None and (st.done.get(a.group, 0) >= a.seq
                                   or (st.busy and st.group == a.group and st.seq == a.seq)):
                arrived.append(str(r))
            else:
                what = st.describe(self.groups) if st else "not answering (frozen or cut off?)"
                missing.append(f"{self.peer_name(r)}: {what}")
        log.warning("ringcomm: rank %d has waited %.0f s in %s [call #%d] of the %s group; "
                    "arrived: %s; not arrived: %s", self.rank, waited, a.op, a.seq, info.label,
                    ", ".join(arrived), "; ".join(missing) or "none (a slow link?)")


def reply(s: socket.socket, body: bytes) -> None:
    """Send a query's answer: a 4-byte length and the JSON."""
    s.sendall(len(body).to_bytes(4, "big") + body)

