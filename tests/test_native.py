"""The compiled core (ringcomm/csrc/, the module ringcomm._native) and the pure-Python path beside it.

The core's reductions must give NumPy's bits in rank order for every dtype it
takes, its checks must report what Python then turns into errors, and the
package must install and run where no C compiler exists, saying so.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
import venv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ringcomm import native
from ringcomm.signature import Op, Signature
from ringcomm.transport import header as header_module
from ringcomm.transport.header import pack
from ringcomm.transport.shm import HEADER, LINE, SLOT_BYTES, region_bytes

ROOT = Path(__file__).resolve().parents[1]

try:
    from ringcomm import _native  # type: ignore[attr-defined]
except ImportError as e:  # pragma: no cover - a machine without a compiler
    _native = None
    WHY = f"the compiled core is not built here ({e})"
else:
    WHY = ""

needs_core = pytest.mark.skipif(_native is None, reason=WHY)


class Ranks:
    """`p` cores over one anonymous mapping: the ranks of a host, in one process."""

    def __init__(self, p: int) -> None:
        self.region = region_bytes(0)
        self.mem = mmap.mmap(-1, self.region * p)
        # Where a rank wakes another: an unconnected socket, whose sends fail (as to a gone
        # peer); no rank of these tests sleeps.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        fds = [self.sock.fileno()] * p
        self.cores = [_native.Segment(self.mem, j, p, self.region, LINE, SLOT_BYTES, fds)
                      for j in range(p)]
        self.posts = 0

    def reduce(self, rows: list[np.ndarray], op: int, kind: int, headers: list[bytes]
               ) -> tuple[list[int], list[np.ndarray]]:
        """Run one call on every rank: all but the last post and find the others missing
        (PENDING), the last completes, then the others finish. Return codes and results."""
        outs = [np.empty_like(r) for r in rows]
        codes = [c.allreduce(r, o, h, 7, self.posts, kind, op, 0.0, 0.0)
                 for c, r, o, h in zip(self.cores, rows, outs, headers)]
        assert codes[:-1] == [native.Codes.PENDING] * (len(rows) - 1)
        self.posts += 1
        for j in range(len(rows) - 1):
            codes[j] = self.cores[j].finish(outs[j], self.posts, kind, op)
        return codes, outs

    def close(self) -> None:
        for c in self.cores:
            c.close()
        self.mem.close()
        self.sock.close()


def header(dt: np.dtype, shape: tuple[int, ...], op: Op = Op.ALL_SUM) -> bytes:
    return pack(Signature(op, 0, 1, dt, shape, 0))


DTYPES = sorted(native.KINDS, key=native.KINDS.__getitem__)


@needs_core
@pytest.mark.parametrize("p", [2, 3, 5])
@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_the_core_reduces_as_numpy_in_rank_order_bit_for_bit(p: int, dt: np.dtype) -> None:
    rng = np.random.default_rng(p)
    n = 257
    if dt.kind == "f":
        rows = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(dt) for _ in range(p)]
        for r in rows:
            r[:4] = [np.nan, np.inf, -np.inf, -0.0]  # NaN wins max and min, as in NumPy
    elif dt.kind == "b":
        rows = [rng.integers(0, 2, n).astype(dt) for _ in range(p)]
    else:  # the whole range: sums wrap around as NumPy's do
        info = np.iinfo(dt)
        rows = [rng.integers(info.min, info.max, n, dtype=dt, endpoint=True) for _ in range(p)]
    ranks = Ranks(p)
    try:
        for op, ufunc in enumerate((np.add, np.maximum, np.minimum)):
            want = rows[0].copy()
            with np.errstate(all="ignore"):
                for r in rows[1:]:
                    ufunc(want, r, out=want)
            codes, outs = ranks.reduce(rows, op, native.kind(dt), [header(dt, (n,))] * p)
            assert codes == [native.Codes.DONE] * p
            for out in outs:
                assert out.tobytes() == want.tobytes(), (ufunc.__name__, out[:8], want[:8])
    finally:
        ranks.close()


def _tie_rows(dt: np.dtype, p: int) -> list[np.ndarray]:
    """Every way `p` ranks can hold +0.0, -0.0, 1.0 and two NaNs of other bits (payload, sign),
    one way per element: ties of zeros of both signs in every order, NaN against NaN."""
    bits = np.uint32 if dt == np.float32 else np.uint64
    nan1 = np.array(0x7FC00001 if dt == np.float32 else 0x7FF8000000000001, bits).view(dt)
    nan2 = np.array(0xFFC00002 if dt == np.float32 else 0xFFF8000000000002, bits).view(dt)
    values = np.array([0.0, -0.0, 1.0, nan1, nan2], dt)
    ways = np.array(np.meshgrid(*[np.arange(len(values))] * p, indexing="ij")).reshape(p, -1)
    return [values[w].copy() for w in ways]


@needs_core
@pytest.mark.parametrize("p", [2, 3])
@pytest.mark.parametrize("dt", [np.dtype(np.float32), np.dtype(np.float64)], ids=str)
def test_max_and_min_break_ties_of_signed_zeros_and_nans_as_numpy_bit_for_bit(
        p: int, dt: np.dtype) -> None:
    # NumPy keeps the second operand on a tie: maximum(+0.0, -0.0) is -0.0 and
    # maximum(-0.0, +0.0) is +0.0 (minimum likewise), and the first NaN's bits.
    assert np.signbit(np.maximum(np.array(0.0, dt), np.array(-0.0, dt)))
    assert not np.signbit(np.maximum(np.array(-0.0, dt), np.array(0.0, dt)))
    assert np.signbit(np.minimum(np.array(0.0, dt), np.array(-0.0, dt)))
    assert not np.signbit(np.minimum(np.array(-0.0, dt), np.array(0.0, dt)))
    rows = _tie_rows(dt, p)
    ranks = Ranks(p)
    try:
        for op, ufunc in ((1, np.maximum), (2, np.minimum)):
            want = rows[0].copy()
            for r in rows[1:]:
                ufunc(want, r, out=want)
            codes, outs = ranks.reduce(rows, op, native.kind(dt), [header(dt, rows[0].shape)] * p)
            assert codes == [native.Codes.DONE] * p
            for out in outs:
                assert out.tobytes() == want.tobytes(), ufunc.__name__
    finally:
        ranks.close()
    if p == 2:  # the pair's exchange reduces with the same loops, in rank order too
        a, b = rows
        for op, ufunc in ((1, np.maximum), (2, np.minimum)):
            socks = Sockets()
            try:
                out0, out1 = np.empty_like(a), np.empty_like(b)
                assert pair_call(socks, 1, b, out1, op=op)[1][0] == native.Codes.PENDING
                _, r0 = pair_call(socks, 0, a, out0, op=op)  # rank 1's message is there
                assert r0[0] == native.Codes.DONE
                assert out0.tobytes() == ufunc(a, b).tobytes(), ufunc.__name__
            finally:
                socks.close()


@needs_core
def test_the_core_checks_every_header_and_leaves_other_dtypes_to_python() -> None:
    ranks = Ranks(3)
    try:
        x = np.arange(4, dtype=np.float32)
        f32 = native.kind(np.dtype(np.float32))
        same = header(x.dtype, x.shape)
        codes, _ = ranks.reduce([x, x, x], 0, f32, [same, header(x.dtype, (2, 2)), same])
        assert codes == [native.Codes.MISMATCH] * 3  # every rank sees it
        h16 = header(np.dtype(np.float16), (4,))
        y = x.astype(np.float16)
        codes, _ = ranks.reduce([y, y, y], 0, native.kind(np.dtype(np.float16)), [h16] * 3)
        assert codes == [native.Codes.REDUCE] * 3  # checked; Python reduces float16
        # A rank that left the job: the others' calls fail (GONE) even though it posted.
        q = memoryview(ranks.mem).cast("Q")
        q[ranks.region // 8 + 2] = 1
        codes, _ = ranks.reduce([x, x, x], 0, f32, [same] * 3)
        assert codes[0] == codes[2] == native.Codes.GONE
        q.release()
    finally:
        ranks.close()


@needs_core
def test_the_core_refuses_buffers_that_do_not_fit() -> None:
    ranks = Ranks(2)
    try:
        big = np.zeros(SLOT_BYTES, dtype=np.uint8)
        with pytest.raises(ValueError, match="exceed a slot"):
            ranks.cores[0].allreduce(big, big.copy(), header(big.dtype, big.shape), 1, 0, 6, 0,
                                     0.0, 0.0)
        x = np.zeros(4, np.float32)
        with pytest.raises(ValueError, match="128 bytes"):
            ranks.cores[0].allreduce(x, x.copy(), b"short", 1, 0, 0, 0, 0.0, 0.0)
        ranks.cores[0].close()
        with pytest.raises(ValueError, match="released"):
            ranks.cores[0].allreduce(x, x.copy(), header(x.dtype, x.shape), 1, 0, 0, 0, 0.0, 0.0)
    finally:
        ranks.close()


class Pair:
    """Two ends of one shared-memory link in one process: `a` sends on the channel `b`
    receives on, and the other way round (ShmLink's layout: two lines, then `cap` bytes)."""

    def __init__(self, cap: int) -> None:
        span = 2 * LINE + cap
        self.mem = mmap.mmap(-1, 2 * span)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        fd = self.sock.fileno()
        self.a = _native.Channel(self.mem, 0, span, cap, fd, fd)
        self.b = _native.Channel(self.mem, span, 0, cap, fd, fd)
        self.q = np.frombuffer(self.mem, np.uint64)
        self.span = span

    def counts(self) -> tuple[int, int]:
        """Return the channel from a to b's head (bytes written) and tail (bytes read)."""
        return int(self.q[0]), int(self.q[LINE // 8])

    def close(self) -> None:
        self.a.close()
        self.b.close()
        del self.q
        self.mem.close()
        self.sock.close()


def send_header(dt: np.dtype, shape: tuple[int, ...], rank: int = 0) -> bytes:
    return pack(Signature(Op.SEND, 0, 1, dt, shape, rank))


@needs_core
def test_a_channel_moves_whole_messages_in_order_across_the_rings_end() -> None:
    pair = Pair(1024)
    try:
        dt, n = np.dtype(np.float32), 200  # 128 + 800 bytes: nearly every message wraps
        h = send_header(dt, (n,))
        for seq in range(1, 51):
            x = np.arange(n, dtype=dt) * seq
            assert pair.a.send(h, seq, x) == native.Codes.DONE
            out = np.empty(n, dt)
            assert pair.b.recv(h, seq, out, 0.0, 0.0) == native.Codes.DONE
            assert out.tobytes() == x.tobytes(), seq
        assert pair.counts() == (50 * (HEADER + 4 * n),) * 2
        # The header on the ring is the template with the message's number in it.
        assert pair.a.send(h, 51, np.zeros(n, dt)) == native.Codes.DONE
        at = pair.span - 1024 + (50 * (HEADER + 4 * n)) % 1024  # where message 51 starts
        raw = bytes(pair.mem[at:pair.span]) + bytes(pair.mem[pair.span - 1024:])
        assert raw[:HEADER] == pack(Signature(Op.SEND, 51, 1, dt, (n,), 0))
    finally:
        pair.close()


@needs_core
def test_a_channel_moves_nothing_when_it_cannot_move_all() -> None:
    pair = Pair(1024)
    try:
        dt = np.dtype(np.uint8)
        h = send_header(dt, (400,))
        x = np.full(400, 7, dt)
        assert pair.a.send(h, 1, x) == native.Codes.DONE
        # No room for a second whole message: the ring is left as it was.
        assert pair.a.send(h, 2, x) == native.Codes.PENDING
        assert pair.counts() == (528, 0)
        # A receive of more than is there, or more than the ring holds, waits a bounded time
        # and takes nothing.
        big = np.empty(401, dt)
        assert pair.b.recv(send_header(dt, (401,)), 1, big, 1e-4, 1e-3) == native.Codes.PENDING
        huge = np.empty(2048, dt)
        assert pair.b.recv(send_header(dt, (2048,)), 1, huge, 0.0, 0.0) == native.Codes.PENDING
        assert pair.counts() == (528, 0)
        out = np.empty(400, dt)
        assert pair.b.recv(h, 1, out, 0.0, 0.0) == native.Codes.DONE
        assert (out == 7).all()
        assert pair.a.send(h, 2, x) == native.Codes.DONE  # room again
        assert pair.counts() == (1056, 528)
        # Nothing there: a bounded wait, then PENDING.
        assert pair.a.recv(h, 1, out, 1e-4, 1e-3) == native.Codes.PENDING
        # After shut, nothing moves either way.
        pair.b.shut()
        assert pair.b.recv(h, 2, out, 0.0, 0.0) == native.Codes.PENDING
        assert pair.b.send(h, 1, x) == native.Codes.PENDING
        assert pair.counts() == (1056, 528)
    finally:
        pair.close()


@needs_core
def test_a_channel_takes_only_the_message_its_header_expects() -> None:
    pair = Pair(4096)
    try:
        x = np.arange(6, dtype=np.float32)
        h = send_header(x.dtype, (2, 3), rank=3)
        assert pair.a.send(h, 5, x.reshape(2, 3)) == native.Codes.DONE
        out = np.empty((3, 2), np.float32)
        for wrong, seq in ((send_header(x.dtype, (3, 2)), 5),  # another shape, same bytes
                           (send_header(np.dtype(np.int32), (2, 3)), 5),  # another dtype
                           (send_header(x.dtype, (2, 3)), 4)):  # another message number
            assert pair.b.recv(wrong, seq, out, 0.0, 0.0) == native.Codes.MISMATCH
            assert pair.counts() == (HEADER + 24, 0)  # nothing taken: Python reads the header
        # The sender's rank is the one field a receiver does not know (any-source sends
        # share a template per peer); it is not compared.
        got = np.empty((2, 3), np.float32)
        assert pair.b.recv(send_header(x.dtype, (2, 3), rank=0), 5, got, 0.0, 0.0) \
            == native.Codes.DONE
        assert got.tobytes() == x.tobytes()
    finally:
        pair.close()


@needs_core
def test_a_channel_refuses_layouts_that_do_not_fit() -> None:
    mem = mmap.mmap(-1, 4096)
    try:
        with pytest.raises(ValueError, match="power-of-two"):
            _native.Channel(mem, 0, 1024, 1000, -1, -1)
        with pytest.raises(ValueError, match="aligned"):
            _native.Channel(mem, 8, 1024, 1024, -1, -1)
        with pytest.raises(ValueError, match="smaller"):
            _native.Channel(mem, 0, 2048, 2048, -1, -1)
        c = _native.Channel(mem, 0, 2048, 1024, -1, -1)
        h = send_header(np.dtype(np.uint8), (4,))
        with pytest.raises(ValueError, match="128 bytes"):
            c.send(b"short", 1, np.zeros(4, np.uint8))
        c.close()
        with pytest.raises(ValueError, match="released"):
            c.send(h, 1, np.zeros(4, np.uint8))
    finally:
        mem.close()


class Sockets:
    """Two ranks joined as a group of two over TCP is: rank r sends on its socket to the
    other and receives on the other's socket to it (socketpairs, in one process)."""

    def __init__(self) -> None:
        self.to1 = socket.socketpair()  # rank 0's [0] sends, rank 1's [1] receives
        self.to0 = socket.socketpair()

    def fds(self, rank: int) -> tuple[int, int]:
        out, inn = (self.to1[0], self.to0[1]) if rank == 0 else (self.to0[0], self.to1[1])
        return out.fileno(), inn.fileno()

    def close(self) -> None:
        for s in self.to1 + self.to0:
            s.close()


def reduce_header(dt: np.dtype, shape: tuple[int, ...], rank: int, op: Op = Op.ALL_SUM) -> bytes:
    return pack(Signature(op, 0, 1, dt, shape, rank))


def pair_call(socks: Sockets, rank: int, x: np.ndarray, out: np.ndarray, seq: int = 3,
              kind: int | None = None, op: int = 0, spin: float = 0.0,
              header: bytes | None = None) -> tuple[np.ndarray, tuple]:
    rows = np.empty((2, HEADER + x.nbytes), np.uint8)
    h = reduce_header(x.dtype, x.shape, rank) if header is None else header
    k = native.kind(x.dtype) if kind is None else kind
    return rows, _native.pair_allreduce(*socks.fds(rank), rows, rank, h, seq, x, out, k, op, spin)


@needs_core
@pytest.mark.parametrize("dt", sorted(native.KINDS, key=str))
def test_the_pairs_exchange_sends_takes_checks_and_reduces_in_rank_order(dt: np.dtype) -> None:
    socks = Sockets()
    try:
        rng = np.random.default_rng(5)
        a, b = (rng.standard_normal(37).astype(dt) if dt.kind == "f" else
                rng.integers(0, 100, 37).astype(dt) for _ in range(2))
        out0, out1 = np.empty_like(a), np.empty_like(b)
        n = HEADER + a.nbytes
        # Rank 0 first: its message goes out, the other's is not there: PENDING, all sent.
        _, r0 = pair_call(socks, 0, a, out0)
        assert r0 == (native.Codes.PENDING, n, 0, 0, 0)
        # Rank 1: its message goes out and rank 0's is there: checked and reduced.
        rows1, r1 = pair_call(socks, 1, b, out1)
        assert r1 == (native.Codes.DONE, n, n, 0, 0)
        assert out1.tobytes() == np.add(a, b).tobytes()
        # Both rows in rank order, each its rank's header (call number 3) and data.
        assert rows1[0, :HEADER].tobytes() == pack(Signature(Op.ALL_SUM, 3, 1, dt, (37,), 0))
        assert rows1[0, HEADER:].tobytes() == a.tobytes()
        assert rows1[1, HEADER:].tobytes() == b.tobytes()
        # Rank 0's message from rank 1 waits in its socket; max and min too, NaN winning.
        rows0, r0 = pair_call(socks, 0, a, out0, seq=4, op=1)
        _, r1 = pair_call(socks, 1, b, out1, seq=4, op=1)
        assert r1[0] == native.Codes.DONE
        assert out1.tobytes() == np.maximum(a, b).tobytes()
    finally:
        socks.close()


@needs_core
def test_the_pairs_exchange_stops_at_a_header_that_differs_and_on_a_closed_peer() -> None:
    socks = Sockets()
    try:
        x, out = np.ones(8, np.float32), np.empty(8, np.float32)
        # The other rank's rank field differs (it is its own): not compared.
        _, r = pair_call(socks, 1, x, out)
        rows, r = pair_call(socks, 0, x, out)
        assert r[0] == native.Codes.DONE and (out == 2).all()
        # Another shape of the same bytes: MISMATCH as soon as the header is in, and the
        # header is in the other's row for Python to read.
        pair_call(socks, 1, x.reshape(2, 4), out.reshape(2, 4))
        rows, r = pair_call(socks, 0, x, out, seq=3)
        assert r[0] == native.Codes.MISMATCH
        assert rows[1, :HEADER].tobytes() == pack(Signature(Op.ALL_SUM, 3, 1, x.dtype, (2, 4), 1))
        # A shorter message than this rank's (another dtype): MISMATCH, not a wait for bytes
        # that never come.
        small = np.ones(8, np.int8)
        pair_call(socks, 1, small, np.empty_like(small), seq=9)
        _, r = pair_call(socks, 0, x, out, seq=9, spin=10.0)
        assert r[0] == native.Codes.MISMATCH and r[2] < HEADER + x.nbytes
        # Python reduces a dtype the core does not.
        pair_call(socks, 1, x, out, seq=10)
        _, r = pair_call(socks, 0, x, out, seq=10, kind=-1)
        assert r[0] == native.Codes.REDUCE
        # A short wait with nothing coming: bounded, PENDING with what moved.
        _, r = pair_call(socks, 0, x, out, seq=11, spin=1e-3)
        assert r == (native.Codes.PENDING, HEADER + x.nbytes, 0, 0, 0)
        # The other rank's end closed: GONE, the receive saying so (-1).
        socks.to0[0].close()
        _, r = pair_call(socks, 0, x, out, seq=12)
        assert r[0] == native.Codes.GONE and r[4] == -1
        # A send on a socket whose reader is gone fails with EPIPE or ECONNRESET.
        socks.to1[1].close()
        _, r = pair_call(socks, 0, x, out, seq=13)
        assert r[0] == native.Codes.GONE and r[3] in (errno.EPIPE, errno.ECONNRESET)
    finally:
        socks.close()


@needs_core
def test_the_pairs_exchange_refuses_arguments_that_do_not_fit() -> None:
    socks = Sockets()
    try:
        x = np.ones(4, np.float32)
        h = reduce_header(x.dtype, x.shape, 0)
        fds = socks.fds(0)
        rows = np.empty((2, HEADER + 16), np.uint8)
        with pytest.raises(ValueError, match="128-byte"):
            _native.pair_allreduce(*fds, rows, 0, b"short", 1, x, np.empty(4, np.float32), 0, 0, 0.)
        with pytest.raises(ValueError, match="rank 0 or 1"):
            _native.pair_allreduce(*fds, rows, 2, h, 1, x, np.empty(4, np.float32), 0, 0, 0.)
        with pytest.raises(ValueError, match="differ in size"):
            _native.pair_allreduce(*fds, rows, 0, h, 1, x, np.empty(5, np.float32), 0, 0, 0.)
        with pytest.raises(ValueError, match="differ in size"):
            _native.pair_allreduce(*fds, rows[:, :-1].copy(), 0, h, 1, x, np.empty(4, np.float32),
                                   0, 0, 0.)
        with pytest.raises(TypeError, match="11 arguments"):
            _native.pair_allreduce(*fds, rows)
    finally:
        socks.close()


# -- the review's findings: every length bounded, peers' counters untrusted, init and close safe


@needs_core
def test_finish_bounds_out_by_the_slot() -> None:
    ranks = Ranks(2)
    try:
        x = np.arange(4, dtype=np.float32)
        codes, _ = ranks.reduce([x, x], 0, native.kind(x.dtype), [header(x.dtype, x.shape)] * 2)
        assert codes == [native.Codes.DONE] * 2
        f32 = native.kind(np.dtype(np.float32))
        # An `out` longer than a slot's data would read past the slot (past the mapping, for
        # the last rank's second slot): refused, as allreduce refuses such buffers.
        for core in ranks.cores:
            with pytest.raises(ValueError, match="exceed a slot"):
                core.finish(np.empty(SLOT_BYTES // 4, np.float32), ranks.posts, f32, 0)
            with pytest.raises(ValueError, match="not whole elements"):
                core.finish(np.empty(6, np.uint8), ranks.posts, f32, 0)
            out = np.empty(4, np.float32)
            assert core.finish(out, ranks.posts, f32, 0) == native.Codes.DONE
            assert out.tolist() == [0, 2, 4, 6]
    finally:
        ranks.close()


@needs_core
def test_the_core_refuses_every_argument_out_of_range() -> None:
    ranks = Ranks(2)
    socks = Sockets()
    try:
        core, x = ranks.cores[0], np.zeros(4, np.float32)
        h = header(x.dtype, x.shape)

        def call(**change: object) -> object:
            a = dict(src=x, out=x.copy(), template=h, seq=1, posts=0, kind=0, op=0, spin=0.0,
                     yield_=0.0)
            a.update(change)
            return core.allreduce(*a.values())

        for bad, kind in (({"spin": float("nan")}, ValueError), ({"yield_": -1.0}, ValueError),
                          ({"yield_": float("inf")}, ValueError), ({"posts": -1}, ValueError),
                          ({"src": np.zeros(7, np.uint8), "out": np.zeros(7, np.uint8)},
                           ValueError), ({"out": np.zeros(5, np.float32)}, ValueError),
                          ({"template": bytearray(128)}, TypeError), ({"seq": 2**64}, OverflowError)):
            with pytest.raises(kind):
                call(**bad)
        assert bytes(ranks.mem[:8]) == bytes(8)  # nothing was posted
        with pytest.raises(ValueError, match="control words"):  # slots over the counters
            _native.Segment(ranks.mem, 0, 2, ranks.region, 0, SLOT_BYTES, [-1, -1])
        fds = socks.fds(0)
        rows = np.empty((2, HEADER + 16), np.uint8)
        for bad in ((-1, fds[1]), (fds[0], 2**40)):
            with pytest.raises(ValueError, match="out of range"):
                _native.pair_allreduce(*bad, rows, 0, h, 1, x, np.empty(4, np.float32), 0, 0, 0.)
        with pytest.raises(ValueError, match="rank 0 or 1"):
            _native.pair_allreduce(*fds, rows, 2**64, h, 1, x, np.empty(4, np.float32), 0, 0, 0.)
        with pytest.raises(ValueError, match="spin"):
            _native.pair_allreduce(*fds, rows, 0, h, 1, x, np.empty(4, np.float32), 0, 0,
                                   float("nan"))
        with pytest.raises(ValueError, match="whole elements"):
            _native.pair_allreduce(*fds, np.empty((2, HEADER + 6), np.uint8), 0, h, 1,
                                   np.zeros(6, np.uint8), np.zeros(6, np.uint8), 0, 0, 0.)
        # 2**32 + 1 is not kind 1 (a truncation would make it float64): Python reduces it.
        pair_call(socks, 1, x, x.copy())
        _, r = pair_call(socks, 0, x, x.copy(), kind=2**32 + 1)
        assert r[0] == native.Codes.REDUCE
    finally:
        socks.close()
        ranks.close()


@needs_core
def test_a_channel_refuses_counters_a_peer_corrupted() -> None:
    cap = 1024
    pair = Pair(cap)
    try:
        q, tail_at, in_head_at = pair.q, LINE // 8, 0  # the channel a sends on, b receives on
        dt = np.dtype(np.uint8)
        h = send_header(dt, (16,))
        x, out = np.full(16, 5, dt), np.empty(16, dt)
        # A message bigger than the ring never fits whole: PENDING (the link streams it).
        assert pair.a.send(send_header(dt, (cap,)), 1, np.zeros(cap - HEADER + 1, dt)) \
            == native.Codes.PENDING
        assert pair.a.send(send_header(dt, (cap,)), 1, np.zeros(cap - HEADER, dt)) \
            == native.Codes.DONE  # exactly the ring
        assert pair.a.send(h, 2, x) == native.Codes.PENDING  # full, not corrupt
        q[tail_at] = cap  # the ring read: room again
        # A tail the peer wrote beyond our head, or a head more than the ring past the tail:
        # never a negative or huge free size.
        for head, tail in ((cap, cap + 1), (cap, 2**64 - 1), (cap + cap + 1, cap)):
            q[in_head_at], q[tail_at] = head, tail
            with pytest.raises(RuntimeError, match="counters are corrupt"):
                pair.a.send(h, 2, x)
            with pytest.raises(RuntimeError, match="counters are corrupt"):
                pair.b.recv(h, 2, out, 0.0, 0.0)
            assert (int(q[in_head_at]), int(q[tail_at])) == (head, tail)  # nothing moved
        q[in_head_at], q[tail_at] = cap, cap
        assert pair.a.send(h, 2, x) == native.Codes.DONE
        assert pair.b.recv(h, 2, out, 0.0, 0.0) == native.Codes.DONE and (out == 5).all()
    finally:
        del q
        pair.close()


@needs_core
def test_a_failed_reinit_leaves_the_segment_and_the_channel_as_they_were() -> None:
    ranks = Ranks(2)
    small = mmap.mmap(-1, 4096)
    try:
        seg, f32 = ranks.cores[0], native.kind(np.dtype(np.float32))
        # Each of these fails after what used to be stored already (the geometry, the fds):
        # the segment keeps its memory and geometry, and holds nothing of the new memory.
        for args, kind in (((small, 0, 2, ranks.region, LINE, SLOT_BYTES, [-1, -1]), ValueError),
                           ((ranks.mem, 1, 3, ranks.region, LINE, SLOT_BYTES, [-1, "x", -1]),
                            TypeError),
                           ((ranks.mem, 0, 2, ranks.region * 4, LINE, SLOT_BYTES, [-1, -1]),
                            ValueError),
                           ((ranks.mem, 0, 2, ranks.region, LINE, -8, [-1, -1]), ValueError)):
            with pytest.raises(kind):
                seg.__init__(*args)
        small.close()  # no buffer of it is held
        x = np.arange(SLOT_BYTES // 4 - HEADER // 4, dtype=np.float32)  # a whole slot's data
        codes, outs = ranks.reduce([x, x], 0, f32, [header(x.dtype, x.shape)] * 2)
        assert codes == [native.Codes.DONE] * 2 and (outs[0] == 2 * x).all()
        chan_mem = mmap.mmap(-1, 4096)
        c = _native.Channel(chan_mem, 0, 2048, 1024, -1, -1)
        other = mmap.mmap(-1, 1024)
        for args in ((other, 0, 2048, 1024, -1, -1), (chan_mem, 0, 2048, 1000, -1, -1),
                     (chan_mem, 0, 2048, 2048, -1, -1), (chan_mem, 0, 512, 1024, -1, -1)):
            with pytest.raises(ValueError):
                c.__init__(*args)
        other.close()
        hd = send_header(np.dtype(np.uint8), (800,))
        assert c.send(hd, 1, np.zeros(800, np.uint8)) == native.Codes.DONE  # still cap 1024
        # A successful re-init releases the old memory.
        fresh = mmap.mmap(-1, 4096)
        c.__init__(fresh, 0, 2048, 1024, -1, -1)
        chan_mem.close()
        c.close()
        fresh.close()
    finally:
        ranks.close()


def _in_a_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Start `call` in a thread; return it and where its result, error and time will be."""
    box: dict = {}
    started = threading.Event()

    def run() -> None:
        started.set()
        t = time.perf_counter()
        try:
            box["result"] = call()
        except Exception as e:  # handed to the test
            box["error"] = e
        box["seconds"] = time.perf_counter() - t

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    time.sleep(0.2)  # into the call's wait, which released the GIL
    return thread, box


@needs_core
def test_close_from_another_thread_during_a_wait_keeps_the_memory_until_the_call_ends() -> None:
    ranks = Ranks(2)
    try:
        x = np.arange(4, dtype=np.float32)
        seg = ranks.cores[0]
        # Nobody else posts: the call waits (10 s at most) without the GIL.
        thread, box = _in_a_thread(lambda: seg.allreduce(
            x, x.copy(), header(x.dtype, x.shape), 1, 0, 0, 0, 0.0, 10.0))
        assert thread.is_alive() and ranks.mem[0] == 1  # posted, waiting
        with pytest.raises(RuntimeError, match="in use"):  # not re-initialised under it either
            seg.__init__(ranks.mem, 0, 2, ranks.region, LINE, SLOT_BYTES, [-1, -1])
        seg.close()
        thread.join(10)
        assert box == {"result": native.Codes.PENDING, "seconds": box["seconds"]}
        assert box["seconds"] < 5  # close ended the wait
        with pytest.raises(ValueError, match="released"):
            seg.finish(x.copy(), 1, 0, 0)
        # The channel's recv likewise; the mapping stays while the call is in it.
        pair = Pair(1024)
        thread, box = _in_a_thread(lambda: pair.b.recv(
            send_header(np.dtype(np.uint8), (4,)), 1, np.empty(4, np.uint8), 0.0, 10.0))
        pair.b.close()
        with_export = pair.mem
        with pytest.raises(BufferError):  # the waiting call still holds the memory
            pair.a.close()
            with_export.close()
        thread.join(10)
        assert box["result"] == native.Codes.PENDING and box["seconds"] < 5
        pair.close()  # now every hold is gone: the mapping closes
        assert pair.mem.closed
    finally:
        ranks.close()


def test_header_size_agrees_with_the_core() -> None:
    assert HEADER == 128
    if _native is not None:
        assert _native.HEADER == HEADER


def test_the_header_layout_is_read_from_header_pys_struct_format() -> None:
    layout = native._header_layout(header_module._FMT.format)
    assert layout["seq"] == (8, 8) and layout["rank"] == (24, 4)
    # Another layout moves the offsets: they are computed, not assumed.
    moved = native._header_layout("<4sBBBxxxxxqQqi11q")
    assert moved["seq"] == (12, 8) and moved["rank"] == (28, 8)
    with pytest.raises(ValueError, match="little-endian"):
        native._header_layout("@4sBBBxqQii11q")


@needs_core
def test_the_core_exports_the_header_offsets_and_a_core_out_of_step_is_refused() -> None:
    assert (_native.HEADER_BYTES, _native.SEQ_AT, _native.SEQ_BYTES, _native.RANK_AT,
            _native.RANK_BYTES) == (header_module.SIZE, 8, 8, 24, 4)
    native._check_header(_native)  # the built core agrees with header.py
    stale = types.SimpleNamespace(__file__="stale.so", HEADER_BYTES=128, SEQ_AT=16, SEQ_BYTES=8,
                                  RANK_AT=24, RANK_BYTES=4)
    with pytest.raises(ImportError, match="out of step.*rebuild"):
        native._check_header(stale)  # type: ignore[arg-type]
    del stale.RANK_AT  # a core from before the constants
    stale.SEQ_AT = 8
    with pytest.raises(ImportError, match="out of step"):
        native._check_header(stale)  # type: ignore[arg-type]


@pytest.mark.timeout(300)
def test_the_package_installs_and_runs_without_a_compiler(tmp_path: Path) -> None:
    """No working C compiler: the build warns, the package installs, runs its pure-Python path
    and says so; RINGCOMM_NATIVE=1 then fails with what to do."""
    if shutil.which("git") is None:
        pytest.skip("needs git to copy the source tree")
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and not f.endswith(".so"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    env_dir = tmp_path / "venv"
    # Its own site-packages: a user's machine, not this one's installed (editable) ringcomm.
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    # Nor a source tree on PYTHONPATH (a worktree under test), which would shadow the install.
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("RINGCOMM_") and k != "PYTHONPATH"}
    # As a user's `pip install`: an isolated build (setuptools from the registry).
    environ.update(CC="false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    build = subprocess.run([py, "-m", "pip", "install", "-v", str(src)],
                           capture_output=True, text=True, env=environ, timeout=240)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "building extension \"ringcomm._native\" failed" in build.stdout + build.stderr
    probe = ("import ringcomm, ringcomm.native as n, sys; "
             "print(ringcomm.__file__); print(n.PATH); print(sys.executable)")
    run = subprocess.run([py, "-c", probe], capture_output=True, text=True, env=environ,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    where, path, exe = run.stdout.split()
    assert where.startswith(str(env_dir)), f"ringcomm came from {where}, not the new venv"
    assert path == "python"
    assert exe == py
    job = tmp_path / "job.py"
    job.write_text("import numpy as np, ringcomm\n"
                   "w = ringcomm.init()\n"
                   "y = ringcomm.all_sum(np.full(3, w.rank() + 1.0))\n"
                   "assert (y == 3).all(), y\n"
                   "print('rank', w.rank(), 'core', w._backend.core, ringcomm.native.PATH)\n")
    ran = subprocess.run([py, "-m", "ringcomm", "launch", "-n", "2", py, str(job)],
                         capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert sorted(ln for ln in ran.stdout.splitlines() if ln.startswith("rank")) == [
        "rank 0 core python python", "rank 1 core python python"]
    forced = subprocess.run([py, "-c", "import ringcomm.native"], capture_output=True, text=True,
                            env={**environ, "RINGCOMM_NATIVE": "1"}, cwd=tmp_path, timeout=60)
    assert forced.returncode != 0
    assert "RINGCOMM_NATIVE=1 but ringcomm's compiled core is not built" in forced.stderr
    assert "reinstall with a C compiler" in forced.stderr


@pytest.mark.parametrize("host", ["big-endian", "32-bit"])
def test_a_host_the_core_cannot_run_on_falls_back_quietly_or_fails_when_asked(
        host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if host == "big-endian":
        monkeypatch.setattr(sys, "byteorder", "big")
    else:
        monkeypatch.setattr(sys, "maxsize", 2**31 - 1)
    monkeypatch.delenv("RINGCOMM_NATIVE", raising=False)
    assert native._load() == (None, "python")  # quietly, as without a core
    monkeypatch.setenv("RINGCOMM_NATIVE", "0")
    assert native._load() == (None, "python")
    monkeypatch.setenv("RINGCOMM_NATIVE", "1")
    with pytest.raises(ImportError, match="RINGCOMM_NATIVE=1 but ringcomm's compiled core "
                       f"does not run here: this host is {host}"):
        native._load()


def test_the_core_refuses_to_build_for_a_32_bit_host(tmp_path: Path) -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to try the 32-bit check with")
    import sysconfig
    probe = tmp_path / "probe.c"
    # What a 32-bit host's headers say, on this one: the core's check must stop the build.
    probe.write_text("#include <stdint.h>\n#undef UINTPTR_MAX\n#define UINTPTR_MAX 0xffffffffu\n"
                     '#include "core.h"\n')
    run = subprocess.run([cc, "-fsyntax-only", "-I", str(ROOT / "ringcomm" / "csrc"),
                          "-I", sysconfig.get_paths()["include"], str(probe)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "needs a 64-bit host" in run.stderr
    ok = subprocess.run([cc, "-fsyntax-only", "-I", sysconfig.get_paths()["include"],
                         str(ROOT / "ringcomm" / "csrc" / "module.c")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


@needs_core
def test_ringcomm_native_0_forces_the_python_path() -> None:
    probe = "import ringcomm.native as n; print(n.PATH, n.CORE)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "RINGCOMM_NATIVE": "0"}, timeout=60, check=True)
    assert out.stdout.split() == ["python", "None"]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "RINGCOMM_NATIVE": ""}, timeout=60, check=True)
    assert out.stdout.split()[0] == "native"
