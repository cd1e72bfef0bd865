"""Links: the shared-memory kind between two ends in one process, and exchange over both kinds.

The two ends of a shared-memory link normally live in two ranks; here they are two
mappings of one segment in one process, with a thread per end, which is enough for the
byte stream, its wrap-around, the waits and their failures. The ranks' own use of links
is tested by the conformance and fault suites.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from ringcomm.errors import CommTimeoutError, PeerAbortedError, PeerError
from ringcomm.transport import link as links
from ringcomm.transport import shm
from ringcomm.transport.tcp import TcpLink

pytestmark = pytest.mark.skipif(not shm.available(), reason="no shared memory here")


class Pair:
    """Two local ranks' views of one segment with one set of links."""

    def __init__(self, timeout: float = 5.0, pids: list[int] | None = None) -> None:
        self.name = shm.segment_name(os.getpid(), "test-links", time.monotonic_ns())
        size, chunk, cap = shm.Shared.size_for(2, staging=False, links=1)
        self.cap = cap
        mems = [shm.create(self.name, size)]
        mems.append(shm.attach(self.name, size))
        shm.unlink(self.name)
        self.aborted: str | None = None
        pids = pids or [os.getpid(), os.getpid()]
        self.wakes = shm.wake_directory()
        self.ends = [shm.Shared(m, self.wakes, i, 2, chunk, pids, timeout, False,
                                lambda j: f"local rank {j}", self._check, cap, 1)
                     for i, m in enumerate(mems)]
        self.a, self.b = self.ends[0].link(1), self.ends[1].link(0)
        for end in self.ends:  # as the set-up does: bind all, connect all, remove the names
            end.join()
        shm.remove_wake_directory(self.wakes)

    def _check(self) -> None:
        if self.aborted is not None:
            raise PeerAbortedError(self.aborted)

    def close(self) -> None:
        for end in self.ends:
            end.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def in_thread(fn) -> tuple[threading.Thread, list]:
    result: list = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the test
            result.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_the_stream_arrives_whole_and_in_order_across_many_wraps(pair: Pair) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=5 * pair.cap + 12345, dtype=np.uint8)
    out = np.zeros_like(data)

    def receive() -> None:  # in odd pieces, so the reads straddle the wrap at every offset
        got = 0
        for size in range(1, 1 << 30):
            if got == data.size:
                return
            k = min(size * 997 % 70001 + 1, data.size - got)
            pair.b.recv_into(memoryview(out)[got:got + k], "recv")
            got += k
    t, result = in_thread(receive)
    for a in range(0, data.size, 300007):  # pieces that do not divide the channel either
        pair.a.send(memoryview(data)[a:a + 300007], "send")
    t.join(30)
    assert result == [None]
    assert np.array_equal(out, data)
    assert pair.a.send_some(memoryview(b""), "send") == 0


def test_exchange_both_ways_at_once_does_not_deadlock(pair: Pair) -> None:
    # Each side sends more than a channel holds before it reads: a plain send would block.
    x = np.arange(3 * pair.cap, dtype=np.uint8)
    y = x[::-1].copy()
    got_x, got_y = np.empty_like(x), np.empty_like(y)
    seen = []
    t, result = in_thread(lambda: links.exchange(pair.b, memoryview(y), pair.b,
                                                 memoryview(got_x), 4, seen.append, op="x"))
    links.exchange(pair.a, memoryview(x), pair.a, memoryview(got_y), 4, seen.append, op="x")
    t.join(30)
    assert result == [None]
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    assert sorted(bytes(v) for v in seen) == sorted([bytes(x[:4]), bytes(y[:4])])


def test_exchange_over_one_link_of_each_kind(pair: Pair) -> None:
    # A ring whose neighbours are one on this host and one elsewhere: send on shared memory,
    # receive on a socket, and the other way round on the other side.
    s1, s2 = socket.socketpair()
    tcp1, tcp2 = TcpLink(s1, "rank 9", 5.0), TcpLink(s2, "rank 8", 5.0)
    try:
        x = np.arange(4 << 20, dtype=np.uint8)
        got_x, got_y = np.empty_like(x), np.empty_like(x)
        t, result = in_thread(lambda: links.exchange(tcp2, memoryview(x[::-1].copy()), pair.b,
                                                     memoryview(got_x), 0, lambda v: None,
                                                     op="x"))
        links.exchange(pair.a, memoryview(x), tcp1, memoryview(got_y), 0, lambda v: None, op="x")
        t.join(30)
        assert result == [None]
        assert np.array_equal(got_x, x) and np.array_equal(got_y, x[::-1])
    finally:
        s1.close()
        s2.close()


def test_a_silent_peer_is_a_timeout_measured_from_the_start_of_the_wait() -> None:
    p = Pair(timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(CommTimeoutError, match=r"recv: local rank 1 sent 3 of 8 bytes "
                                                   r"within 0.5 s \(shared memory\)"):
            p.b.send(b"abc", "send")
            p.a.recv_into(memoryview(bytearray(8)), "recv")
        assert 0.5 <= time.monotonic() - start < 2.0
        # A full channel and no reader: the sender gives up too.
        with pytest.raises(CommTimeoutError, match="send: local rank 1 took"):
            p.a.send(bytes(p.cap + 1), "send")
    finally:
        p.close()


def test_an_abort_or_a_peer_that_left_ends_a_wait(pair: Pair) -> None:
    t, result = in_thread(lambda: pair.a.recv_into(memoryview(bytearray(8)), "recv"))
    time.sleep(0.2)
    pair.aborted = "rank 5 failed in all_sum: boom"  # seen at the wait's next re-check
    t.join(5)
    assert isinstance(result[0], PeerAbortedError) and "rank 5 failed" in str(result[0])
    pair.aborted = None
    # A failure elsewhere in this rank's collective shuts the link down: its waits fail.
    t, result = in_thread(lambda: pair.b.recv_into(memoryview(bytearray(8)), "recv"))
    time.sleep(0.2)
    pair.b.shutdown()
    t.join(5)
    assert isinstance(result[0], PeerError) and "was shut down" in str(result[0])
    pair.ends[1].abandon()  # local rank 1 failed: it marks its region
    with pytest.raises(PeerAbortedError, match="local rank 1 on this host left the job"):
        pair.a.recv_into(memoryview(bytearray(8)), "recv")


def test_a_peer_process_that_died_is_named() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    p = Pair(pids=[os.getpid(), dead.pid])
    try:
        start = time.monotonic()
        with pytest.raises(PeerError, match=rf"recv: local rank 1 \(pid {dead.pid}\) on this "
                                            "host exited"):
            p.a.recv_into(memoryview(bytearray(8)), "recv")
        assert time.monotonic() - start < 1.0
    finally:
        p.close()
