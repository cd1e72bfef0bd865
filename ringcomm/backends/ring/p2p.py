"""send and recv between any two ranks of a group: the message, its check, and its fast path.

A message is a header (the call's signature with the message number of its ordered pair
of world ranks) and the data, on the process's link to the peer (`Mailbox.out` /
`into`: shared memory to a rank of this host, else a TCP connection made on first use),
one message at a time per link (its wire lock). The receiver checks the header against
its own call before it reads a byte of data.

Between two ranks of one host a small message of a kind seen before takes the latency
path: a plan per (way, peer, dtype, shape), and one call of the compiled core moves the
whole message through the link's channel; where it cannot (no room, not there yet, a
header that differs), the general path goes on with the same message number.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, NoReturn

import numpy as np

from ... import native
from ...arrays import check_dtype
from ...errors import MismatchError, PeerError, RingcommError
from ...signature import Op, Signature
from ...transport import header, shm
from ...transport.endpoint import Endpoint
from ...transport.link import YIELD_SECONDS
from .call import Route, tracked
from .plans import Plans

if TYPE_CHECKING:
    from ...trace import Tracer
    from ...transport.watch import Watch

__all__ = ["P2P_SMALL_BYTES", "P2pPlan", "PointToPoint"]

# send/recv messages up to this size between ranks of one host take the compiled core's
# latency path (one call moves the header and the data).
P2P_SMALL_BYTES = 64 << 10
_DONE = native.Codes.DONE
_MISSING = Plans.MISSING


class P2pPlan(NamedTuple):
    """What a small send or recv of one kind (peer, dtype, shape) needs on every call."""

    channel: object  # the link's compiled end (ringcomm._native.Channel)
    lock: threading.Lock  # the wire lock of that way to that peer
    key: tuple[str, int]  # the message counter: ("out" or "in", the peer's world rank)
    template: bytes  # the header with message number 0
    world: int  # the peer's world rank
    peer: int  # its rank in the group
    shape: tuple[int, ...]
    dtype: np.dtype
    spin: float  # the short wait of a recv: spin this long, then yield until YIELD_SECONDS


class PointToPoint:
    """send and recv of one group; `fail(op, exc)` raises the error every rank raises."""

    def __init__(self, ep: Endpoint, members: list[int], gid: int, label: str, route: Route,
                 peer: Callable[[int], str], fail: Callable[[str, BaseException], None],
                 fast: bool) -> None:
        self.ep = ep
        self.members = members
        self.rank = members.index(ep.rank)
        self.size = len(members)
        self.gid = gid
        self.label = label
        self.route = route
        self.watch: Watch = ep.watch
        self.tracer: Tracer | None = ep.tracer
        self._peer = peer
        self._fail = fail
        # Per (way, peer, dtype, shape): the plan, or None (that kind takes the link's path).
        self.plans: Plans[P2pPlan | None] | None = Plans() if fast else None

    def _run_or_fail(self, op: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except RingcommError as e:
            self._fail(op, e)

    def _begin(self, op: str, peer: int) -> tuple[int, int]:
        """Begin a send or recv with group rank `peer`: return (its world rank, message number).

        Messages are numbered per ordered pair of world ranks; the watch records the call.
        """
        ep, w = self.ep, self.members[peer]
        ep.raise_if_aborted()
        with ep.mail.lock:
            seq = ep.mail.next_seq(("out" if op == "send" else "in", w))
        ep.watch.enter(op, self.gid, seq, w)
        self.route.took("p2p")  # until the link is known: shm-p2p or tcp-p2p
        return w, seq

    # -- the general path ------------------------------------------------------------------

    @tracked
    def send(self, buf: np.ndarray, dst: int) -> None:
        w, seq = self._begin("send", dst)

        def go() -> None:
            with self.ep.mail.wire_lock("out", w):
                self._send(buf, w, seq)
        self._run_or_fail("send", go)

    @tracked
    def recv(self, out: np.ndarray, src: int) -> None:
        w, seq = self._begin("recv", src)

        def go() -> None:
            with self.ep.mail.wire_lock("in", w):
                self._receive(out, src, w, seq)
        self._run_or_fail("recv", go)

    def _send(self, buf: np.ndarray, w: int, seq: int) -> None:
        """Send message `seq` to world rank `w` (its wire lock held)."""
        sig = Signature(Op.SEND, seq, self.gid, buf.dtype, tuple(buf.shape), self.rank)
        link = self.ep.mail.out(w)
        self.route.took(f"{link.kind}-p2p")
        link.send(header.pack(sig), "send")
        if buf.nbytes:
            link.send(buf.reshape(-1).view(np.uint8).data, "send")

    def _receive(self, out: np.ndarray, src: int, w: int, seq: int) -> None:
        """Receive message `seq` from group rank `src` (world rank `w`) into `out` (its wire
        lock held): check its header against this call, then take its data."""
        mine = Signature(Op.SEND, seq, self.gid, out.dtype, tuple(out.shape), self.rank)
        link = self.ep.mail.into(w, f"recv from {self._peer(src)}")
        self.route.took(f"{link.kind}-p2p")
        hdr = bytearray(header.SIZE)
        link.recv_into(memoryview(hdr), "recv")
        theirs = header.unpack(hdr)
        if theirs is None:
            raise PeerError(f"recv: {self._peer(src)} sent bytes that are not a message")
        what = mine.differs(theirs) or header.dims_differ(mine, hdr)
        if what is not None:
            raise MismatchError(
                f"recv mismatch in the {self.label} group: rank {self.rank} expects "
                f"{out.dtype} shape {tuple(out.shape)} from rank {src}, which sent "
                f"{theirs.describe()} as message #{theirs.seq} (expected #{seq}): {what}")
        if out.nbytes:
            link.recv_into(out.reshape(-1).view(np.uint8).data, "recv")

    @tracked
    def _send_rest(self, buf: np.ndarray, w: int, seq: int) -> None:
        self.ep.watch.enter("send", self.gid, seq, w)
        self._run_or_fail("send", lambda: self._send(buf, w, seq))

    @tracked
    def _recv_rest(self, out: np.ndarray, src: int, w: int, seq: int) -> None:
        self.ep.watch.enter("recv", self.gid, seq, w)
        self._run_or_fail("recv", lambda: self._receive(out, src, w, seq))

    # -- the latency path between two ranks of one host ------------------------------------

    def send_small(self, x: np.ndarray, dst: int) -> bool:
        """Send the C-contiguous NumPy array `x` to group rank `dst` on the latency path;
        return False (nothing done) where the call takes `send` instead."""
        plans = self.plans
        if plans is None:
            return False
        key = ("out", dst, x.dtype, x.shape)
        plan = plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = plans.add(key, self._plan("send", "send", dst, x.dtype, x.shape))
        if plan is None or not x.flags.c_contiguous:
            return False
        ep = self.ep
        if ep.aborts.reason is not None:
            ep.aborts.raise_if_stopped()
        lock = plan.lock
        if not lock.acquire(False):
            return False  # another thread of this rank sends there now
        try:
            mail = ep.mail
            with mail.lock:
                seq = mail.next_seq(plan.key)
            try:
                done = plan.channel.send(plan.template, seq, x) == _DONE
            except RingcommError:
                raise
            except RuntimeError as e:  # counters a peer corrupted
                self._corrupt("send", plan, e)
            route = self.route
            route.path, route.native = "shm-p2p", done
            if not done:
                self._send_rest(x, plan.world, seq)  # no room: wait for it as send does
        finally:
            lock.release()
        return True

    def recv_small(self, key: tuple, shape: object, dtype: object, src: int,
                   op: str = "recv") -> np.ndarray | None:
        """Return the array of `shape` and `dtype` that group rank `src` sent, on the latency
        path (`key` names the kind: ("in", src, dtype, shape) as the caller spelled them);
        None (nothing done) where the call takes `recv` instead. `op` names the call in
        errors of its arguments."""
        plans = self.plans
        if plans is None:
            return None
        plan = plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = plans.add(key, self._plan("recv", op, src, dtype, shape))
        if plan is None:
            return None
        ep = self.ep
        if ep.aborts.reason is not None:
            ep.aborts.raise_if_stopped()
        lock = plan.lock
        if not lock.acquire(False):
            return None  # another thread of this rank receives from there now
        out = np.empty(plan.shape, plan.dtype)
        try:
            mail = ep.mail
            with mail.lock:
                seq = mail.next_seq(plan.key)
            try:
                done = plan.channel.recv(plan.template, seq, out, plan.spin,
                                         YIELD_SECONDS) == _DONE
            except RingcommError:
                raise
            except RuntimeError as e:  # counters a peer corrupted
                self._corrupt("recv", plan, e)
            route = self.route
            route.path, route.native = "shm-p2p", done
            if not done:
                # Not all there yet, or a header that differs: the link's wait and checks.
                self._recv_rest(out, plan.peer, plan.world, seq)
        finally:
            lock.release()
        return out

    def _corrupt(self, op: str, plan: P2pPlan, e: RuntimeError) -> NoReturn:
        """Counters a peer corrupted: the error every rank raises, naming the peer."""
        self._fail(op, PeerError(f"{op}: the link with {self._peer(plan.peer)}: {e}"))
        raise e  # not reached: fail raises

    def _plan(self, way: str, op: str, peer: object, dtype: object,
              shape: object) -> P2pPlan | None:
        """Return the plan of small sends (way "send") or receives (the call `op`) like these,
        or None where they take the link's path (a rank of another host, a message too big for
        the core). Bad arguments raise as the calls' own checks do."""
        r = int(peer)  # type: ignore[call-overload]
        if not 0 <= r < self.size:
            raise ValueError(f"{op}: {'dst' if way == 'send' else 'src'} must be in "
                             f"[0, {self.size}), got {r}")
        if r == self.rank:
            raise ValueError(f"{op}: {'dst' if way == 'send' else 'src'} {r} is this rank; "
                             "send and recv need another rank")
        dt = np.dtype(dtype)  # type: ignore[call-overload]
        check_dtype(dt, op)
        assert isinstance(shape, (int, tuple))
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        w = self.members[r]
        link = self.ep.mail.local.get(w)
        if not isinstance(link, shm.ShmLink) or link.core is None:
            return None
        nbytes = dt.itemsize * int(np.prod(dims, dtype=np.int64))
        if nbytes > P2P_SMALL_BYTES or header.SIZE + nbytes > link.cap // 2:
            return None
        sig = Signature(Op.SEND, 0, self.gid, dt, dims, self.rank)
        direction = "out" if way == "send" else "in"
        return P2pPlan(link.core, self.ep.mail.wire_lock(direction, w), (direction, w),
                       header.pack(sig), w, r, dims, dt, link.spin)
