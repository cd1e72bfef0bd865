"""Addresses, listening and connecting sockets, and exact reads and writes with deadlines."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import environment
from ..errors import CommTimeoutError, ConnectError, PeerError

__all__ = ["Address", "connect", "describe_errno", "listen", "parse_address", "recv_exact", "tune"]

_HINTS = {
    errno.ECONNREFUSED: "nothing listens there yet: is the rank started, and is the port right?",
    errno.EADDRINUSE: "another process holds the port: let the launcher pick free ports, "
    "or choose others with --starting-port",
    errno.EADDRNOTAVAIL: "the address is not on this host: check this host's ips in the hostfile",
    errno.EHOSTUNREACH: "no route to the host: check the address, the interface and the network",
    errno.ENETUNREACH: "no route to the network: check the address and the interface",
    errno.ETIMEDOUT: "no answer: a firewall may drop packets to that port, or the host is down",
    errno.EACCES: "permission denied: ports below 1024 need privileges",
}


@dataclass(frozen=True)
class Address:
    """A host and port of a rank's listener."""

    host: str
    port: int

    def __str__(self) -> str:
        return environment.format_address(self.host, self.port)


def parse_address(text: str) -> Address:
    """Return the Address of 'ip:port' or '[ipv6]:port'; raise ValueError otherwise."""
    return Address(*environment.parse_address(text))


def describe_errno(e: OSError) -> str:
    """Return 'ENAME (message): hint' for an OSError."""
    code = e.errno or 0
    name = errno.errorcode.get(code, str(code))
    text = f"{name} ({os.strerror(code)})" if code else str(e)
    hint = _HINTS.get(code)
    return f"{text}; {hint}" if hint else text


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def listen(addr: Address) -> socket.socket:
    """Return a socket listening on `addr`; raise ConnectError naming the address on failure."""
    s = socket.socket(_family(addr.host), socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr.host, addr.port))
        s.listen(128)
    except OSError as e:
        s.close()
        raise ConnectError(f"cannot listen on {addr}: {describe_errno(e)}") from e
    return s


def _set_timeouts(s: socket.socket, seconds: float) -> None:
    """Bound every blocking send and recv on `s` by `seconds` in the kernel.

    Kernel timeouts keep the socket in blocking mode, so a recv with
    MSG_WAITALL is one system call per chunk instead of poll + recv.
    """
    sec = int(seconds)
    usec = int((seconds - sec) * 1e6)
    tv = struct.pack("ll", sec, usec)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def tune(s: socket.socket, timeout: float) -> None:
    """Set no-delay, keepalive and kernel deadlines on a connected socket."""
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    # A host that vanishes without a reset is noticed in about 10 + 3*3 seconds.
    if hasattr(socket, "TCP_KEEPIDLE"):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
    elif sys.platform == "darwin":  # macOS names it TCP_KEEPALIVE (0x10)
        s.setsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPALIVE", 0x10), 10)
    if hasattr(socket, "TCP_KEEPINTVL"):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3)
    if hasattr(socket, "TCP_KEEPCNT"):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    _set_timeouts(s, timeout)


def connect(addr: Address, deadline: float, *, what: str, retry: bool = True) -> socket.socket:
    """Return a socket connected to `addr`, retrying with backoff until `deadline` (monotonic).

    Without `retry`, the first failure is final: for a rank that may be gone.
    """
    delay = 0.01
    while True:
        s = socket.socket(_family(addr.host), socket.SOCK_STREAM)
        left = deadline - time.monotonic()
        s.settimeout(max(0.05, min(left, 10.0)))
        try:
            s.connect((addr.host, addr.port))
            return s
        except OSError as e:
            s.close()
            left = deadline - time.monotonic()
            if left <= 0 or not retry:
                if isinstance(e, socket.timeout) and not e.errno:
                    e = OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
                raise ConnectError(f"cannot connect to {what} at {addr}: {describe_errno(e)}") from e
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)


def recv_exact(s: socket.socket, view: memoryview, *, peer: str, op: str, timeout: float) -> None:
    """Fill `view` from `s`; raise PeerError on EOF or reset, CommTimeoutError on the deadline."""
    recv_at_least(s, view, len(view), peer=peer, op=op, timeout=timeout, flags=socket.MSG_WAITALL)


class _Deadline:
    """The deadline of one wait that may take several system calls, measured from its start.

    The kernel's SO_RCVTIMEO/SO_SNDTIMEO restarts with every system call, and a
    call that made partial progress returns at its timeout with what it moved:
    a loop of them could wait a multiple of the timeout. The first call runs
    with the socket's own timeout (`timeout` seconds, set by `tune`); every
    later one with what is left of `timeout` since `start`.
    """

    __slots__ = ("_s", "_end", "_timeout", "_changed")

    def __init__(self, s: socket.socket, timeout: float, start: float) -> None:
        self._s, self._timeout, self._changed = s, timeout, False
        self._end = start + timeout

    def next_call(self) -> bool:
        """Set the kernel timeout to what is left; return False when nothing is left."""
        left = self._end - time.monotonic()
        if left <= 0:
            return False
        _set_timeouts(self._s, left)
        self._changed = True
        return True

    def restore(self) -> None:
        if self._changed:
            try:
                _set_timeouts(self._s, self._timeout)
            except OSError:
                pass  # the socket failed: the caller reports that


def recv_at_least(s: socket.socket, view: memoryview, least: int, *, peer: str, op: str,
                  timeout: float, flags: int = 0) -> int:
    """Receive at least `least` bytes into `view`, and whatever more of it has come; return the count.

    Without MSG_WAITALL in `flags`, one system call usually brings a whole small
    message, header and data, while a sender whose message is shorter than
    `view` cannot make this wait. The wait ends `timeout` seconds after it began.
    """
    got, n = 0, len(view)
    start, deadline = time.monotonic(), None
    try:
        while got < least:
            if got and deadline is None:
                deadline = _Deadline(s, timeout, start)
            if deadline is not None and not deadline.next_call():
                raise CommTimeoutError(f"{op}: {peer} sent {got} of {least} bytes within "
                                       f"{timeout:g} s")
            try:
                k = s.recv_into(view[got:], n - got, flags)
            except (TimeoutError, BlockingIOError) as e:
                raise CommTimeoutError(f"{op}: {peer} sent nothing within {timeout:g} s") from e
            except OSError as e:
                raise PeerError(f"{op}: connection to {peer} failed: {describe_errno(e)}") from e
            if k == 0:
                raise PeerError(f"{op}: {peer} closed the connection (did it exit or crash?)")
            got += k
    finally:
        if deadline is not None:
            deadline.restore()
    return got


def exchange(out: socket.socket, data: memoryview, inn: socket.socket, view: memoryview,
             header: int, check: Callable[[memoryview], None], timeout: float, *, peer_out: str,
             peer_in: str, op: str, spin: float = 0.0, sent: int = 0, got: int = 0) -> None:
    """Send `data` on `out` and fill `view` from `inn`, calling `check` on its first `header` bytes.

    Two ranks that send each other more than their socket buffers hold would
    both block in a plain send. Here the send never blocks: while it cannot go
    on, this thread takes what has arrived, and it sleeps in poll() only when
    neither socket can move. A small message costs one send and one receive.

    With `spin` > 0, the wait for the header first polls without blocking for
    up to `spin` seconds: a reply usually comes within microseconds, and a
    blocked thread on an idle core takes far longer than that to wake.

    `sent` and `got` resume an exchange that moved that much already (the compiled
    core's, which stops after its short wait).
    """
    n, m = len(data), len(view)
    checked = got >= header
    if checked:
        check(view[:header])
    poller = None
    while sent < n:
        try:
            sent += out.send(data[sent:], socket.MSG_DONTWAIT)
            continue
        except BlockingIOError:
            pass
        except OSError as e:
            raise PeerError(f"{op}: connection to {peer_out} failed: {describe_errno(e)}") from e
        if got < m:
            try:
                k = inn.recv_into(view[got:], m - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                k = -1
            except OSError as e:
                raise PeerError(f"{op}: connection to {peer_in} failed: {describe_errno(e)}") from e
            if k == 0:
                raise PeerError(f"{op}: {peer_in} closed the connection (did it exit or crash?)")
            if k > 0:
                got += k
                if not checked and got >= header:
                    check(view[:header])
                    checked = True
                continue
        if poller is None:
            poller = select.poll()
        flags = {out.fileno(): select.POLLOUT}
        if got < m:
            flags[inn.fileno()] = flags.get(inn.fileno(), 0) | select.POLLIN
        for fd in flags:
            poller.register(fd, flags[fd])
        ready = poller.poll(timeout * 1000)
        for fd in flags:
            poller.unregister(fd)
        if not ready:
            raise CommTimeoutError(f"{op}: {peer_out} took nothing and {peer_in} sent nothing "
                                   f"within {timeout:g} s")
    if got < header and spin > 0:
        end = time.perf_counter() + spin
        while got < m and time.perf_counter() < end:
            try:
                k = inn.recv_into(view[got:], m - got, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                break  # the blocking receive below reports it
            if k == 0:
                break
            got += k
    if got < header:
        got += recv_at_least(inn, view[got:], header - got, peer=peer_in, op=op,
                             timeout=timeout)
    if not checked:
        check(view[:header])
    if got < m:
        recv_exact(inn, view[got:], peer=peer_in, op=op, timeout=timeout)


def send_all(s: socket.socket, data: memoryview | bytes, *, peer: str, op: str,
             timeout: float) -> None:
    """Send all of `data` within `timeout` seconds of the start; raise PeerError on a reset,
    CommTimeoutError on the deadline."""
    view = memoryview(data).cast("B")
    sent, n = 0, len(view)
    start, deadline = time.monotonic(), None
    try:
        while sent < n:
            if sent and deadline is None:
                deadline = _Deadline(s, timeout, start)
            if deadline is not None and not deadline.next_call():
                raise CommTimeoutError(f"{op}: {peer} took {sent} of {n} bytes within {timeout:g} s")
            try:
                sent += s.send(view[sent:])
            except (TimeoutError, BlockingIOError) as e:
                raise CommTimeoutError(f"{op}: {peer} took nothing within {timeout:g} s") from e
            except OSError as e:
                raise PeerError(f"{op}: connection to {peer} failed: {describe_errno(e)}") from e
    finally:
        if deadline is not None:
            deadline.restore()
