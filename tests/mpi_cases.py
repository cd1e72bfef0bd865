"""In-rank cases: every op x every dtype x awkward shapes, asserted on every rank.

Run inside each rank of a job, e.g. ``mpirun -n 4 python tests/mpi_cases.py mpi``
or ``ringcomm launch -n 4 tests/mpi_cases.py ring``. Arguments: BACKEND [MODE [CASE]],
MODE one of conformance (default), mismatch, chunked, large; CASE names one
mismatch case (default: all, in one job). The body uses only
the public API except the `chunked` mode, which shrinks the MPI backend's piece
size so that small arrays take the large-message paths.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

import ringcomm
from ringcomm.arrays import bfloat16

DTYPES = [
    np.dtype(t)
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64,
        np.float16, np.float32, np.float64, np.complex64, np.complex128,
    )
] + ([bfloat16] if bfloat16 is not None else [])

# (shape, layout): 0-d, empty, fewer elements than ranks, 2-D, non-contiguous.
SHAPES = [((), "c"), ((0,), "c"), ((0, 3), "c"), ((1,), "c"), ((7,), "c"),
          ((3, 4), "c"), ((5,), "strided"), ((4, 3), "transposed")]

checks = 0


def check(ok: bool, what: str) -> None:
    """Count a check; raise AssertionError naming it when it fails."""
    global checks
    checks += 1
    if not ok:
        raise AssertionError(f"rank {RANK}: {what}")


def same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Check dtype, shape and every value (bit for bit, via float64 for 16-bit floats)."""
    got = np.asarray(got)
    check(got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}")
    check(got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}")
    wide = np.complex128 if want.dtype.kind == "c" else np.float64
    check(np.array_equal(got.astype(wide), want.astype(wide)),
          f"{what}: values {got.ravel()[:8]}, expected {want.ravel()[:8]}")


def value(dt: np.dtype, shape: tuple[int, ...], r: int, layout: str = "c") -> np.ndarray:
    """Return rank r's input: small integers, exact in every dtype after summing 4 ranks."""
    if layout == "strided":
        return value(dt, (shape[0] * 2,) + shape[1:], r)[::2]
    if layout == "transposed":
        return value(dt, shape[::-1], r).T
    i = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if dt == np.bool_:
        return (i + r) % 3 == 0
    base = (i * 7 + r * 3) % 5 + r
    if dt.kind == "i" or dt.kind == "f" or dt == bfloat16:
        base = base - 3
    if dt.kind == "c":
        return (base + 1j * ((base + r) % 3)).astype(dt)
    return base.astype(dt)


def reduced(stack: list[np.ndarray], how: str, dt: np.dtype) -> np.ndarray:
    wide = np.stack([a.astype(np.complex128 if dt.kind == "c" else np.float64) for a in stack])
    if how == "sum":
        out = wide.sum(axis=0)
        return (out != 0) if dt == np.bool_ else out.astype(dt)
    return (wide.max(axis=0) if how == "max" else wide.min(axis=0)).astype(dt)


def conformance(n: int) -> None:
    reducers: dict[str, Callable[..., np.ndarray]] = {
        "sum": ringcomm.all_sum, "max": ringcomm.all_max, "min": ringcomm.all_min,
    }
    for dt in DTYPES:
        for shape, layout in SHAPES:
            xs = [value(dt, shape, r, layout) for r in range(n)]
            x = xs[RANK]
            before = x.copy()
            tag = f"{dt}{shape}{layout}"
            for how, fn in reducers.items():
                if how != "sum" and dt.kind == "c":
                    continue
                same(fn(x), reduced(xs, how, dt), f"all_{how} {tag}")
            same(x, before, f"input untouched {tag}")
            rows = [a.reshape(1) if a.ndim == 0 else a for a in xs]
            same(ringcomm.all_gather(x), np.concatenate(rows), f"all_gather {tag}")
            for root in range(n):
                same(ringcomm.broadcast(x, root), xs[root], f"broadcast root {root} {tag}")
            if shape and shape[0] % n == 0:
                m = shape[0] // n
                want = reduced(xs, "sum", dt)[RANK * m:(RANK + 1) * m]
                same(ringcomm.sum_scatter(x), want, f"sum_scatter {tag}")
        scat = [value(dt, (4, 2 * n), r).T for r in range(n)]  # non-contiguous, divisible
        want = reduced(scat, "sum", dt)[2 * RANK:2 * RANK + 2]
        same(ringcomm.sum_scatter(scat[RANK]), want, f"sum_scatter {dt} transposed")
        point_to_point(n, dt)
    splits(n)
    ringcomm.barrier()


def point_to_point(n: int, dt: np.dtype) -> None:
    """Send between every ordered pair of ranks, with recv and recv_like."""
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            x = value(dt, (3, 2), a * 10 + b, "transposed")
            if RANK == a:
                ringcomm.send(x, b)
                ringcomm.send(x[0], b)
            elif RANK == b:
                same(ringcomm.recv(x.shape, dt, a), x, f"recv {dt} {a}->{b}")
                same(ringcomm.recv_like(x[0], a), x[0], f"recv_like {dt} {a}->{b}")


def splits(n: int) -> None:
    world = ringcomm.init()
    pairs = world.split(RANK // 2)
    check(pairs.size() == min(2, n - RANK // 2 * 2), f"split size {pairs.size()}")
    check(pairs.rank() == RANK % 2, f"split rank {pairs.rank()}")
    total = ringcomm.all_sum(np.array([RANK], np.int64), group=pairs)
    members = [r for r in range(n) if r // 2 == RANK // 2]
    same(total, np.array([sum(members)], np.int64), "all_sum in split(rank // 2)")
    evens = world.split(RANK % 2)
    members = [r for r in range(n) if r % 2 == RANK % 2]
    same(ringcomm.all_gather(np.array([RANK], np.int32), group=evens),
         np.array(members, np.int32), "all_gather in split(rank % 2)")
    backwards = world.split(0, key=n - RANK)
    check(backwards.rank() == n - 1 - RANK, f"split by key: rank {backwards.rank()}")
    same(ringcomm.all_gather(np.array([RANK]), group=backwards),
         np.arange(n)[::-1], "all_gather in split by key")
    if n > 1:  # send/recv inside a subgroup use the subgroup's ranks
        g = backwards
        if g.rank() == 0:
            ringcomm.send(np.arange(3.0), g.size() - 1, group=g)
        elif g.rank() == g.size() - 1:
            same(ringcomm.recv((3,), np.float64, 0, group=g), np.arange(3.0), "recv in split")
    inner = pairs.split(0)
    same(ringcomm.all_sum(np.ones(2), group=inner), np.full(2, float(pairs.size())),
         "nested split")


def expect_mismatch(call: Callable[[], object], what: str, words: list[str]) -> None:
    try:
        call()
    except ringcomm.MismatchError as e:
        text = str(e)
        check(all(w in text for w in words), f"{what}: message {text!r} lacks {words}")
    else:
        check(False, f"{what}: no MismatchError")


def mismatch_cases(n: int) -> dict[str, Callable[[], None]]:
    """Return the mismatch cases: each raises MismatchError on every rank (recv: the receiver)."""
    last = RANK == n - 1
    x = np.ones(4, np.float32)

    def recv_shape() -> None:
        if RANK == 0:
            ringcomm.send(np.ones((2, 3), np.float32), n - 1)
        elif last:
            expect_mismatch(lambda: ringcomm.recv((3, 2), np.float32, 0), "recv shape",
                            ["recv", "(2, 3)", "(3, 2)", "rank 0"])

    return {
        "op": lambda: expect_mismatch(
            lambda: ringcomm.all_max(x) if last else ringcomm.all_sum(x),
            "op", ["all_sum", "all_max", f"rank {n - 1}", "op"]),
        "dtype": lambda: expect_mismatch(
            lambda: ringcomm.all_sum(x.astype(np.float64) if last else x),
            "dtype", ["all_sum", "float32", "float64", "dtype"]),
        "shape": lambda: expect_mismatch(
            lambda: ringcomm.all_gather(np.ones(3 if last else 4)),
            "shape", ["all_gather", "(3,)", "(4,)", "shape"]),
        "root": lambda: expect_mismatch(
            lambda: ringcomm.broadcast(x, root=1 if last else 0),
            "root", ["broadcast", "root", "rank"]),
        "barrier": lambda: expect_mismatch(
            lambda: ringcomm.barrier() if last else ringcomm.all_sum(x),
            "barrier", ["barrier", "all_sum"]),
        "recv": recv_shape,
    }


def mismatch(n: int, only: str | None = None) -> None:
    """Run one mismatch case, or all of them checking the group stays usable after each."""
    if n == 1:
        return
    cases = mismatch_cases(n)
    for name in [only] if only else list(cases):
        cases[name]()
        if not only:  # MPI keeps the group usable after a mismatch; other backends may end it
            same(ringcomm.all_sum(np.ones(3)), np.full(3, float(n)), f"all_sum after {name}")


def large(n: int) -> None:
    """Move more than 2 GiB in one call (MPI counts are C ints)."""
    count = 2**31 + 3
    x = np.ones(count, np.int8)
    s = ringcomm.all_sum(x)
    check(s.shape == (count,) and int(s[0]) == n and int(s[-1]) == n
          and bool((s == n).all()), "all_sum > 2 GiB")
    del s
    x[-1] = RANK
    b = ringcomm.broadcast(x, root=n - 1)
    check(int(b[-1]) == n - 1 and int(b[0]) == 1, "broadcast > 2 GiB")
    del b
    g = ringcomm.all_gather(x)
    check(g.shape == (n * count,) and [int(g[(r + 1) * count - 1]) for r in range(n)]
          == list(range(n)) and int(g[count]) == 1, "all_gather > 2 GiB")
    del g
    if n > 1:
        if RANK == 0:
            ringcomm.send(x.view(np.uint8), 1)
        elif RANK == 1:
            y = ringcomm.recv((count,), np.uint8, 0)
            check(int(y[-1]) == 0 and int(y[-2]) == 1, "send/recv > 2 GiB")


def main(argv: list[str]) -> None:
    global RANK, SIZE
    backend = argv[1] if len(argv) > 1 else "any"
    mode = argv[2] if len(argv) > 2 else "conformance"
    world = ringcomm.init(backend=backend, strict=backend != "any")
    RANK, SIZE = world.rank(), world.size()
    if mode == "chunked":
        from ringcomm.backends.mpi import backend as mpi

        mpi._CHUNK_BYTES = 40  # small arrays now take every multi-piece path
    if mode == "mismatch":
        mismatch(SIZE, argv[3] if len(argv) > 3 else None)
    else:
        {"conformance": conformance, "chunked": conformance, "large": large}[mode](SIZE)
    print(f"ok {mode} rank {RANK}/{SIZE} backend {world.backend}: {checks} checks", flush=True)


RANK, SIZE = 0, 1

if __name__ == "__main__":
    main(sys.argv)
