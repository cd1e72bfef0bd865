"""One process's place in the job: its listeners, its connections and links, its abort state.

Every group of the process (the world and the groups split from it) shares
one Endpoint. The listener threads accept connections, authenticate them and
file them under their hello; group code takes them out by key. When any rank
fails, the reason reaches every rank through a short ABORT connection (the
protocol is `abort`), and every blocked socket of this process is shut down
so no thread waits on.
"""

from __future__ import annotations

import atexit
import logging
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from .. import environment
from ..errors import CommTimeoutError, MismatchError, RingcommError
from . import handshake
from .abort import Abort, Reason, decode
from .handshake import Hello, Kind
from .link import Link
from .mailbox import Mailbox
from .net import Address, connect, listen, tune
from .tcp import TcpLink
from .watch import Watch, reply

if TYPE_CHECKING:
    from ..trace import Tracer

__all__ = ["Endpoint"]

log = logging.getLogger("ringcomm")

class Endpoint:
    """Listeners, connection registry and abort state of one process."""

    def __init__(self, rank: int, addrs: list[list[Address]], key: bytes, timeout: float,
                 stall: float = environment.DEFAULT_STALL_SECONDS,
                 listeners: list[socket.socket] | None = None) -> None:
        self.rank = rank
        self.addrs = addrs
        self.key = key
        self.timeout = timeout
        self._cond = threading.Condition()
        self._filed: dict[tuple[int, int, int, int], socket.socket] = {}
        self._socks: list[socket.socket] = []
        self.mail = Mailbox(self._connect_p2p, self._take_p2p)  # send/recv's links and counters
        self.tracer: Tracer | None = None  # set by the backend when RINGCOMM_TRACE is on
        self.watch = Watch(rank, addrs, key, timeout,
                           lambda reason: self.abort(reason, Reason.MISMATCH, notify=True),
                           self.mail.counts, self.mail.sent_to, stall)
        self.aborts = Abort(rank, len(addrs), self._send_notice, self.watch.silent)
        self.aborts.hooks.append(self._wake_all)
        atexit.register(self.flush)  # notices started just before a normal exit still go out
        if listeners is not None and len(addrs) == 1:
            for ls in listeners:
                ls.close()
            listeners = []
        self._listeners = listeners if listeners is not None else (
            [listen(a) for a in addrs[rank]] if len(addrs) > 1 else [])
        self.host_names: list[str] | None = None  # which ranks share a host, where known
        self.shared_memory = False  # whether groups use shared memory between a host's ranks
        self.authenticated = True  # whether `key` is a secret (not derived from public facts)
        self.algorithm = "auto"  # RINGCOMM_ALGORITHM: how small all-reduces cross sockets
        self._gate = handshake.Gate(self._listeners, key, self._admit, label=f"rank {rank}",
                                    seconds=min(timeout, handshake.HANDSHAKE_SECONDS)) \
            if self._listeners else None

    def peer(self, world_rank: int) -> str:
        """Return 'rank R (ip:port)' for messages."""
        return f"rank {world_rank} ({self.addrs[world_rank][0]})"

    # -- connections -------------------------------------------------------------------------

    def _admit(self, s: socket.socket, hello: Hello, peer: str) -> None:
        """File a connection that proved the key (the gate's thread: nothing here blocks)."""
        if hello.kind in (Kind.QUERY, Kind.ABORT):
            threading.Thread(target=self._answer, args=(s, hello), daemon=True,
                             name="ringcomm-answer").start()
            return
        tune(s, self.timeout)
        key = (int(hello.kind), hello.src, hello.group, hello.lane)
        with self._cond:
            if self.aborts.reason is not None:
                s.close()
                return
            old = self._filed.pop(key, None)
            if old is not None:
                old.close()
            self._filed[key] = s
            self._socks.append(s)
            self._cond.notify_all()
        log.debug("rank %d accepted rank %d's %s connection from %s", self.rank, hello.src,
                  hello.kind.name, peer)

    def _answer(self, s: socket.socket, hello: Hello) -> None:
        """Answer a query, or take an abort notice: one exchange, one deadline."""
        deadline = time.monotonic() + handshake.HANDSHAKE_SECONDS
        with s:
            try:
                s.settimeout(handshake.HANDSHAKE_SECONDS)
                if hello.kind == Kind.QUERY:
                    reply(s, self.watch.status(hello.src))
                    return
                reason, kind = decode(lambda n: handshake.read_exact(s, n, deadline))
            except (handshake.HandshakeError, OSError, ValueError) as e:
                log.debug("rank %d: rank %d's %s connection failed: %s", self.rank, hello.src,
                          hello.kind.name, e)
                return
        self.abort(reason, kind, notify=False, remote=True)

    def connect(self, dst: int, hello: Hello, deadline: float, lane: int = 0) -> socket.socket:
        """Return an authenticated connection to world rank `dst`, filed there under `hello`."""
        self.raise_if_aborted()
        targets = self.addrs[dst]
        addr = targets[lane % len(targets)]
        s = connect(addr, deadline, what=f"rank {dst}")
        try:
            handshake.client(s, self.key, hello, deadline)
        except RingcommError as e:
            s.close()
            raise type(e)(f"handshake with rank {dst} at {addr} failed: {e}") from None
        tune(s, self.timeout)
        with self._cond:
            self._socks.append(s)
        log.debug("rank %d connected to rank %d at %s (%s)", self.rank, dst, addr, hello.kind.name)
        return s

    def take(self, kind: Kind, src: int, group: int, lane: int, deadline: float,
             what: str) -> socket.socket:
        """Return the connection world rank `src` filed under this key; wait until `deadline`."""
        key = (int(kind), src, group, lane)
        with self._cond:
            while key not in self._filed:
                self.raise_if_aborted()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeoutError(
                        f"{what}: {self.peer(src)} did not connect within {self.timeout:g} s; "
                        "is it running and did it make the same call? (RINGCOMM_TIMEOUT sets "
                        "the deadline)"
                    )
                self._cond.wait(left)
            return self._filed.pop(key)

    def _connect_p2p(self, dst: int) -> Link:
        """Open this process's sending link to world rank `dst` (a TCP connection)."""
        deadline = time.monotonic() + self.timeout
        s = self.connect(dst, Hello(Kind.P2P, self.rank, 0), deadline)
        return TcpLink(s, self.peer(dst), self.timeout)

    def _take_p2p(self, src: int, what: str) -> Link:
        """Wait for the sending link world rank `src` opened to this process."""
        deadline = time.monotonic() + self.timeout
        return TcpLink(self.take(Kind.P2P, src, 0, 0, deadline, what), self.peer(src),
                       self.timeout)

    # -- failure (the protocol is in `abort`) --------------------------------------------------

    @property
    def aborted(self) -> str | None:
        """Return why the job stopped, or None while it runs."""
        return self.aborts.reason

    def raise_if_aborted(self) -> None:
        """Raise if the job has been aborted by this rank or another."""
        self.aborts.raise_if_stopped()

    def abort(self, reason: str, kind: Reason, *, notify: bool, remote: bool = False) -> None:
        """Stop the job: wake every blocked thread and, with `notify`, tell every rank why."""
        self.aborts.stop(reason, kind, notify=notify, remote=remote)

    def flush(self) -> None:
        """Wait (at most a few seconds) until this process's abort notices have gone out."""
        self.aborts.flush()

    def _wake_all(self) -> None:
        """Shut down every socket of this process (the abort hook of the TCP links)."""
        with self._cond:
            self._cond.notify_all()  # connections awaited in `take`
            socks = list(self._socks) + list(self._filed.values())
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send_notice(self, dst: int, body: bytes, deadline: float) -> None:
        """Deliver an abort notice to world rank `dst` on a connection of its own."""
        try:
            addr = self.addrs[dst][0]
            # One attempt: a rank whose port refuses is gone and needs no notice.
            s = connect(addr, deadline, what=f"rank {dst}", retry=False)
            with s:
                handshake.client(s, self.key, Hello(Kind.ABORT, self.rank, 0), deadline)
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.sendall(body)
        except (OSError, RingcommError):
            pass  # that rank is gone or going; the launcher ends it

    def install_excepthook(self) -> None:
        """Tell every rank when this process dies of an uncaught exception."""
        previous = sys.excepthook

        def hook(kind: type, value: BaseException, tb: object) -> None:
            try:
                self.abort(f"rank {self.rank} stopped on an uncaught {kind.__name__}: {value}",
                           Reason.MISMATCH if isinstance(value, MismatchError) else Reason.CAUSE,
                           notify=True)
            finally:
                previous(kind, value, tb)  # type: ignore[arg-type]

        sys.excepthook = hook

    def close(self) -> None:
        """Close listeners and connections."""
        self.watch.close()
        if self._gate is not None:
            self._gate.close()
        with self._cond:
            socks = list(self._socks) + list(self._filed.values())
        for s in socks:
            s.close()
