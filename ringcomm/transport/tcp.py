"""The TCP link: one authenticated socket to another rank (see `link` for the interface)."""

from __future__ import annotations

import select
import socket

from ..errors import PeerError
from .link import Link
from .net import describe_errno, recv_exact, send_all

__all__ = ["TcpLink"]


class TcpLink(Link):
    """A link over a connected, tuned socket (`net.tune` set its kernel deadlines)."""

    kind = "tcp"

    def __init__(self, sock: socket.socket, peer: str, timeout: float) -> None:
        super().__init__(peer, timeout)
        self.sock = sock
        self._pollers: dict[bool, select.poll] = {}

    def fileno(self) -> int:
        """Return the connection's descriptor (for the compiled core's exchange)."""
        return self.sock.fileno()

    def send(self, data: memoryview | bytes, op: str) -> None:
        send_all(self.sock, data, peer=self.peer, op=op, timeout=self.timeout)

    def recv_into(self, view: memoryview, op: str) -> None:
        recv_exact(self.sock, view, peer=self.peer, op=op, timeout=self.timeout)

    def send_some(self, data: memoryview, op: str) -> int:
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:
            raise PeerError(f"{op}: connection to {self.peer} failed: {describe_errno(e)}") from e

    def recv_some(self, view: memoryview, op: str) -> int:
        try:
            k = self.sock.recv_into(view, len(view), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:
            raise PeerError(f"{op}: connection to {self.peer} failed: {describe_errno(e)}") from e
        if k == 0 and len(view):
            raise PeerError(f"{op}: {self.peer} closed the connection (did it exit or crash?)")
        return k

    def readiness(self, write: bool) -> tuple[int, int]:
        return self.sock.fileno(), select.POLLOUT if write else select.POLLIN

    def ready(self, write: bool) -> bool:
        poller = self._pollers.get(write)
        if poller is None:
            poller = self._pollers[write] = select.poll()
            poller.register(*self.readiness(write))
        return bool(poller.poll(0))

    def arm(self, write: bool) -> bool:
        return False  # poll() tells

    def disarm(self, write: bool) -> None:
        return None

    def check(self, op: str) -> None:
        return None  # a peer that went away resets or closes the connection

    def rechecks(self) -> bool:
        return False

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
