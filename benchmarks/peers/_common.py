"""The timing loop every peer's rank script shares, so their rows mean what ringcomm's mean.

Same protocol as `ringcomm bench`: float32 arrays of each size, 3 untimed
calls, then `iterations(size)` timed calls (a barrier before each when the
size exceeds 1 MiB), the result checked, and rank 0's median printed as

    <peer> p=<ranks> bytes=<size> median_us=<t> algbw_GBps=<a> busbw_GBps=<b>

with busbw = algbw * 2(p-1)/p (all-reduce) and GB/s = 1e9 bytes per second.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

SIZES = [4, 4096, 65536, 1 << 20, 16 << 20, 64 << 20]


def sizes(argv: list[str]) -> list[int]:
    """Return the sizes in bytes given as arguments, else the default list."""
    return [int(a) for a in argv] or SIZES


def iterations(nbytes: int) -> int:
    """Return the number of timed calls for `nbytes`, the rule `ringcomm bench` uses."""
    return max(5, min(200, int(2e8 // max(nbytes, 1))))


def line(peer: str, ranks: int, nbytes: int, seconds: float, bus: float | None = None) -> str:
    """Return one result line; busbw is algbw times `bus` (default the all-reduce's 2(p-1)/p)."""
    alg = nbytes / seconds
    bus = 2 * (ranks - 1) / ranks if bus is None else bus
    return (f"{peer} p={ranks} bytes={nbytes} median_us={seconds * 1e6:.1f} "
            f"algbw_GBps={alg / 1e9:.3f} busbw_GBps={alg * bus / 1e9:.3f}")


Call = Callable[[], None]
First = Callable[[], float]
Reset = Callable[[], None]


def run(peer: str, rank: int, ranks: int, make: Callable[[int], tuple[Call, First, Reset | None]],
        barrier: Callable[[], None], argv: list[str] | None = None) -> None:
    """Time the all-reduce that `make(count)` returns at every size; rank 0 prints a line each.

    `make(count)` returns a function that does one all-reduce of `count`
    float32 ones, one that returns the first element of the last result
    (untimed), and for an in-place all-reduce one that refills the ones
    (untimed, before every call).
    """
    for nbytes in sizes(sys.argv[1:] if argv is None else argv):
        count = max(1, nbytes // 4)
        call, first, reset = make(count)
        for _ in range(3):
            reset() if reset else None
            call()
        if first() != ranks:
            raise AssertionError(f"{peer}: all-reduce of ones gave {first()}, expected {ranks}")
        times = []
        for _ in range(iterations(nbytes)):
            reset() if reset else None
            if nbytes > (1 << 20):
                barrier()
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        if rank == 0:
            print(line(peer, ranks, count * 4, statistics.median(times)), flush=True)


# The tensor-parallel decode step: this many all-reduces of the layer size, then one of 4 B.
DECODE_CALLS = 100
DECODE_BYTES = 16 << 10
DECODE_STEPS = 60


def decode(peer: str, rank: int, ranks: int, make: Callable[[int], tuple[Call, First, Reset | None]],
           argv: list[str] | None = None) -> None:
    """Time decode steps as `ringcomm bench --op decode` does; rank 0 prints one line per size.

    A step is DECODE_CALLS all-reduces of the size (default DECODE_BYTES) and one of 4 bytes,
    back to back as a model's layers make them. The line's median_us is the median step's
    time over DECODE_CALLS + 1 (the time of one all-reduce); steps/s is 1e6 / (that * calls).
    """
    for nbytes in sizes(sys.argv[1:] if argv is None else argv) or [DECODE_BYTES]:
        big, _, reset_big = make(max(1, nbytes // 4))
        small, first, reset_small = make(1)

        def step(big: Call = big, small: Call = small) -> None:
            for _ in range(DECODE_CALLS):
                big()
            small()

        for _ in range(3):
            reset_big() if reset_big else None
            reset_small() if reset_small else None
            step()
        if first() != ranks:
            raise AssertionError(f"{peer}: the step's 4-byte all-reduce gave {first()}, "
                                 f"expected {ranks}")
        times = []
        for _ in range(DECODE_STEPS):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        if rank == 0:
            per_call = statistics.median(times) / (DECODE_CALLS + 1)
            print(line(peer, ranks, max(1, nbytes // 4) * 4, per_call), flush=True)
