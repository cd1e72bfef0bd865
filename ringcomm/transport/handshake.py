"""Mutual challenge-response authentication of a new connection.

Both sides prove that they hold the job's token without sending it:

    connector -> listener   MAGIC, nonce_c
    listener  -> connector  nonce_l, HMAC(key, "L" | nonce_c | nonce_l)
    connector -> listener   hello, HMAC(key, "C" | nonce_l | nonce_c | hello)
    listener  -> connector  ACK

Fresh nonces on both sides mean a recorded exchange cannot be replayed, and a
connection from another job (another token) fails on the first check.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import socket
import struct
from dataclasses import dataclass

from ..errors import ConnectError

__all__ = ["HandshakeError", "Hello", "Kind", "client", "read_exact", "server"]

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
    """The other side could not prove the job token, or spoke another protocol."""


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise HandshakeError("connection closed during the handshake")
        data += chunk
    return data


def client(s: socket.socket, key: bytes, hello: Hello) -> None:
    """Authenticate to a listener and announce `hello`; raise HandshakeError on failure."""
    nonce_c = os.urandom(_NONCE)
    s.sendall(MAGIC + nonce_c)
    reply = read_exact(s, _NONCE + _MAC)
    nonce_l, mac_l = reply[:_NONCE], reply[_NONCE:]
    if not hmac.compare_digest(mac_l, _mac(key, b"L", nonce_c, nonce_l)):
        raise HandshakeError("the listener does not hold this job's token (another job's port?)")
    body = hello.pack()
    s.sendall(body + _mac(key, b"C", nonce_l, nonce_c, body))
    if read_exact(s, 1) != _ACK:
        raise HandshakeError("the listener refused the connection")


def server(s: socket.socket, key: bytes, first_bytes: float | None = None) -> Hello:
    """Check a connector's proof of the token and return its hello; raise HandshakeError.

    With `first_bytes`, the magic must arrive within that many seconds (a ringcomm
    connector sends it at once); the rest within the socket's own timeout.
    """
    if first_bytes is not None:
        later = s.gettimeout()
        s.settimeout(first_bytes)
        try:
            magic = read_exact(s, len(MAGIC))
        finally:
            s.settimeout(later)
    else:
        magic = read_exact(s, len(MAGIC))
    if magic != MAGIC:
        raise HandshakeError(f"not a ringcomm connection (first bytes {magic!r})")
    nonce_c = read_exact(s, _NONCE)
    nonce_l = os.urandom(_NONCE)
    s.sendall(nonce_l + _mac(key, b"L", nonce_c, nonce_l))
    rest = read_exact(s, _HELLO.size + _MAC)
    body, mac_c = rest[: _HELLO.size], rest[_HELLO.size:]
    if not hmac.compare_digest(mac_c, _mac(key, b"C", nonce_l, nonce_c, body)):
        raise HandshakeError("the connector does not hold this job's token")
    try:
        hello = Hello.unpack(body)
    except ValueError as e:
        raise HandshakeError(f"malformed hello: {e}") from e
    s.sendall(_ACK)
    return hello
