"""Mutual challenge-response authentication of a new connection, and the gate that runs it.

Both sides prove that they hold the job's key without sending it:

    connector -> listener   MAGIC, nonce_c
    listener  -> connector  nonce_l, HMAC(key, "L" | nonce_c | nonce_l)
    connector -> listener   hello, HMAC(key, "C" | nonce_l | nonce_c | hello)
    listener  -> connector  ACK

Fresh nonces on both sides mean a recorded exchange cannot be replayed, and a
connection from another job (another key) fails on the first check.

The listener's side is a state machine without I/O (`Responder`), so that one
thread (`Gate`) runs the handshakes of every connection a process accepts.
Each connection has one total deadline from its accept: a stranger that sends
a byte now and then is dropped when it runs out, however it drips, and it
holds no thread meanwhile. The connector's side (`client`) measures its
deadline from the start too.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import CommTimeoutError, ConnectError

__all__ = ["Gate", "HandshakeError", "Hello", "Kind", "Responder", "client", "read_exact"]

log = logging.getLogger("ringcomm")

MAGIC = b"RCH1"
_NONCE = 16
_MAC = 32
_HELLO = struct.Struct("<BxHiQ")
_ACK = b"\x06"


class Kind(enum.IntEnum):
    """What a connection is for."""

    RING = 1  # a ring link of a group; lane is the link's index
    P2P = 2  # send/recv from the connector to the listener
    ABORT = 3  # one message: the reason a rank stopped
    QUERY = 4  # one question, one answer: what the listener's process is doing
    RDZV = 5  # a rank's report to rank 0's rendezvous, and the rank table back
    PAIR = 6  # a group's link between two of its ranks for direct exchanges (all_to_all)


@dataclass(frozen=True)
class Hello:
    """Who connects and for what: the key under which the listener files the connection."""

    kind: Kind
    src: int  # world rank of the connector
    group: int  # group id (RING) or 0
    lane: int = 0

    def pack(self) -> bytes:
        return _HELLO.pack(int(self.kind), self.lane, self.src, self.group)

    @classmethod
    def unpack(cls, data: bytes) -> Hello:
        kind, lane, src, group = _HELLO.unpack(data)
        return cls(Kind(kind), src, group, lane)


class HandshakeError(ConnectError):
    """The other side could not prove the job's key, or spoke another protocol."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def read_exact(s: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """Return exactly `n` bytes from `s`, in time linear in `n`.

    With `deadline` (monotonic), the whole read ends then (TimeoutError);
    without it, each receive waits as long as the socket's own timeout.
    """
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"received {got} of {n} bytes before the deadline")
            s.settimeout(left)
        k = s.recv_into(view[got:], n - got)
        if not k:
            raise HandshakeError("connection closed during the handshake")
        got += k
    return bytes(buf)


def client(s: socket.socket, key: bytes, hello: Hello, deadline: float | None = None) -> None:
    """Authenticate to a listener and announce `hello`, all by `deadline` (monotonic; default
    HANDSHAKE_SECONDS from now).

    Raise HandshakeError when the listener cannot prove the key, CommTimeoutError when it
    does not answer in time, ConnectError when the connection fails.
    """
    if deadline is None:
        deadline = time.monotonic() + HANDSHAKE_SECONDS
    try:
        nonce_c = os.urandom(_NONCE)
        s.settimeout(max(0.01, deadline - time.monotonic()))
        s.sendall(MAGIC + nonce_c)
        reply = read_exact(s, _NONCE + _MAC, deadline)
        nonce_l, mac_l = reply[:_NONCE], reply[_NONCE:]
        if not hmac.compare_digest(mac_l, _mac(key, b"L", nonce_c, nonce_l)):
            raise HandshakeError("the listener does not hold this job's key (another job's "
                                 "port, or a rank started with another RINGCOMM_TOKEN?)")
        body = hello.pack()
        s.settimeout(max(0.01, deadline - time.monotonic()))
        s.sendall(body + _mac(key, b"C", nonce_l, nonce_c, body))
        if read_exact(s, 1, deadline) != _ACK:
            raise HandshakeError("the listener refused the connection")
    except TimeoutError as e:
        raise CommTimeoutError(f"the handshake got no answer in time ({e}); is the listener "
                               "frozen or overloaded?") from None
    except HandshakeError:
        raise
    except OSError as e:
        raise ConnectError(f"the connection failed during the handshake: {e}") from e


class Responder:
    """The listener's side of one handshake, without I/O.

    `feed(data)` takes what arrived and returns what to send back; `hello` is
    set once the connector has proved the key. Raises HandshakeError at the
    first byte that cannot be right.
    """

    __slots__ = ("_key", "_buf", "_nonce_c", "_nonce_l", "hello")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._buf = bytearray()
        self._nonce_c: bytes | None = None
        self._nonce_l = b""
        self.hello: Hello | None = None

    def need(self) -> int:
        """Return how many more bytes the handshake waits for (0 when it is over)."""
        if self.hello is not None:
            return 0
        want = len(MAGIC) + _NONCE if self._nonce_c is None else _HELLO.size + _MAC
        return want - len(self._buf)

    def started(self) -> bool:
        """Return whether the magic has arrived (a ringcomm connector sends it at once)."""
        return self._nonce_c is not None or len(self._buf) >= len(MAGIC)

    def feed(self, data: bytes) -> bytes:
        if len(data) > self.need():
            raise HandshakeError("the connector sent more than the handshake holds")
        self._buf += data
        if len(self._buf) >= len(MAGIC) and self._nonce_c is None \
                and bytes(self._buf[:len(MAGIC)]) != MAGIC:
            raise HandshakeError(f"not a ringcomm connection (first bytes "
                                 f"{bytes(self._buf[:len(MAGIC)])!r})")
        if self.need():
            return b""
        if self._nonce_c is None:
            self._nonce_c = bytes(self._buf[len(MAGIC):])
            self._buf.clear()
            self._nonce_l = os.urandom(_NONCE)
            return self._nonce_l + _mac(self._key, b"L", self._nonce_c, self._nonce_l)
        body, mac_c = bytes(self._buf[:_HELLO.size]), bytes(self._buf[_HELLO.size:])
        if not hmac.compare_digest(mac_c, _mac(self._key, b"C", self._nonce_l, self._nonce_c,
                                                body)):
            raise HandshakeError("the connector does not hold this job's key")
        try:
            self.hello = Hello.unpack(body)
        except ValueError as e:
            raise HandshakeError(f"malformed hello: {e}") from e
        return _ACK


# A ringcomm connector sends its magic at once and finishes in milliseconds.
FIRST_BYTES_SECONDS = 1.0
HANDSHAKE_SECONDS = 5.0
# Connections in their handshake at once, per gate; beyond it the oldest is dropped (a real
# rank's handshake is over long before it becomes the oldest of so many).
MAX_PENDING = 256
# Refused connections are logged once, then summed up at most this often.
REFUSED_LOG_SECONDS = 10.0


@dataclass
class _Pending:
    sock: socket.socket
    peer: str
    responder: Responder
    first: float  # the magic must have come by then
    deadline: float  # the whole handshake must be over by then


class Gate:
    """Accept connections on `listeners` and authenticate them, all in one thread.

    `admit(sock, hello, peer)` receives each connection that proved the key (in
    blocking mode, no timeout set) and must not block. Every other connection
    is closed at its first wrong byte, at its deadline, or when MAX_PENDING
    newer ones push it out; refusals are logged with a rate limit.
    """

    def __init__(self, listeners: list[socket.socket], key: bytes,
                 admit: Callable[[socket.socket, Hello, str], None], *, label: str,
                 seconds: float = HANDSHAKE_SECONDS,
                 first_bytes: float = FIRST_BYTES_SECONDS) -> None:
        self._key = key
        self._admit = admit
        self._label = label
        self._seconds = seconds
        self._first_bytes = min(first_bytes, seconds)
        self._pending: collections.OrderedDict[int, _Pending] = collections.OrderedDict()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._listeners = listeners
        for ls in listeners:
            ls.setblocking(False)
            self._sel.register(ls, selectors.EVENT_READ, ls)
        self._closed = False
        self._refusals = 0
        self._refused_logged = -REFUSED_LOG_SECONDS
        self.refused = 0  # every refusal so far (for tests and the trace)
        self._thread = threading.Thread(target=self._run, daemon=True, name="ringcomm-gate")
        self._thread.start()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closed:
                now = time.monotonic()
                self._expire(now)
                due = min((min(p.deadline, p.first if not p.responder.started() else p.deadline)
                           for p in self._pending.values()), default=now + 1.0)
                for sel_key, _ in self._sel.select(max(0.0, min(1.0, due - now))):
                    if sel_key.data is None:
                        return  # closed
                    if isinstance(sel_key.data, socket.socket):
                        self._accept(sel_key.data)
                    else:
                        self._step(sel_key.data)
        finally:
            for p in list(self._pending.values()):
                self._drop(p)
            self._sel.close()
            self._wake_r.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                s, addr = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # the listener failed or was closed
            s.setblocking(False)
            now = time.monotonic()
            while len(self._pending) >= MAX_PENDING:
                _, oldest = self._pending.popitem(last=False)
                self._refuse(oldest, "dropped: too many connections in their handshake at once")
            p = _Pending(s, str(addr[0]), Responder(self._key), now + self._first_bytes,
                         now + self._seconds)
            self._pending[s.fileno()] = p
            self._sel.register(s, selectors.EVENT_READ, p)

    def _step(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(max(1, p.responder.need()))
            if not data:
                raise HandshakeError("connection closed during the handshake")
            out = p.responder.feed(data)
            if out and p.sock.send(out) != len(out):
                raise HandshakeError("the connector does not read the handshake")
        except BlockingIOError:
            return
        except (OSError, HandshakeError) as e:
            self._refuse(p, e)
            return
        hello = p.responder.hello
        if hello is None:
            return
        self._forget(p)
        try:
            p.sock.setblocking(True)
            self._admit(p.sock, hello, p.peer)
        except Exception as e:  # a failure to file one connection must not stop the gate
            p.sock.close()
            log.warning("ringcomm %s: could not take %s's %s connection: %s", self._label,
                        p.peer, hello.kind.name, e)

    def _expire(self, now: float) -> None:
        for p in list(self._pending.values()):
            if now >= p.deadline:
                self._refuse(p, f"the handshake did not finish within {self._seconds:g} s")
            elif now >= p.first and not p.responder.started():
                self._refuse(p, f"sent nothing within {self._first_bytes:g} s")

    def _forget(self, p: _Pending) -> None:
        self._pending.pop(p.sock.fileno(), None)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, p: _Pending) -> None:
        self._forget(p)
        p.sock.close()

    def _refuse(self, p: _Pending, why: object) -> None:
        """Close a connection that did not prove the key; log the first, then a count."""
        self.refused += 1
        self._drop(p)
        self._refusals += 1
        now = time.monotonic()
        if now < self._refused_logged + REFUSED_LOG_SECONDS:
            return
        count, self._refusals, self._refused_logged = self._refusals, 0, now
        more = f" ({count} refused since the last report)" if count > 1 else ""
        log.warning("ringcomm %s refused a connection from %s: %s%s", self._label, p.peer, why,
                    more)

    # -- stopping ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting; close the listeners and every connection still in its handshake."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        self._wake_w.close()
        for ls in self._listeners:
            ls.close()
