"""Every reduce op, complex order, the variable-size collectives and groups made by their
members, checked on every rank against a single-process reference.

    python reduce_ops.py CASE      (CASE: all; any backend)

Every rank builds every rank's input from the same seeds, so each can compute the reference
itself. Ends with ``ok CASE rank R (K cases)``.
"""

from __future__ import annotations

import sys

import numpy as np

import ringcomm
from ringcomm import MismatchError, ReduceOp

INT = [np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                             "uint64")]
FLOAT = [np.dtype(t) for t in ("float16", "float32", "float64")]
COMPLEX = [np.dtype(t) for t in ("complex64", "complex128")]
BOOL = [np.dtype(np.bool_)]
# Sizes: a 0-d array, the latency paths (slots, the pair), the chunked one, and the ring's.
SHAPES = [(), (5,), (3, 4), (3000,), (70_000,)]


def data(rank: int, dt: np.dtype, shape: tuple[int, ...], op: ReduceOp) -> np.ndarray:
    """Rank `rank`'s input: the same on every rank that asks."""
    rng = np.random.default_rng([rank, hash_of(dt), len(shape), int(np.prod(shape))])
    n = int(np.prod(shape))
    if dt.kind == "b":
        a = rng.random(n) < (0.8 if op in (ReduceOp.PROD, ReduceOp.BAND, ReduceOp.MIN) else 0.2)
    elif dt.kind in "iu":
        if op is ReduceOp.PROD:
            a = rng.integers(-3 if dt.kind == "i" else 0, 4, n)
        else:
            info = np.iinfo(dt)
            a = rng.integers(max(info.min, -1000), min(info.max, 1000), n, endpoint=True)
    elif dt.kind == "f":
        a = rng.uniform(0.5, 1.5, n) if op is ReduceOp.PROD else rng.standard_normal(n) * 8
    else:
        # Complex: real parts from a few values, so that many elements tie on the real part
        # and the imaginary part decides; NaN in one rank's elements at a time.
        re = rng.integers(-2, 3, n).astype(float)
        im = rng.standard_normal(n)
        a = re + 1j * im
        if n > 4:
            a[rank::7] = complex(np.nan, 1.0) if rank % 2 else complex(0.5, np.nan)
    return np.asarray(a).astype(dt).reshape(shape)


def hash_of(dt: np.dtype) -> int:
    return sum(ord(c) for c in dt.str)


def reference(rows: list[np.ndarray], op: ReduceOp, p: int) -> np.ndarray:
    want = rows[0].copy()
    with np.errstate(all="ignore"):
        for r in rows[1:]:
            op.ufunc(want, r, out=want)
        if op is ReduceOp.AVG:
            want = want / np.asarray(p, dtype=want.dtype) if want.dtype.kind in "fc" else want
            want = want.astype(rows[0].dtype)
    return want


def same(got: np.ndarray, want: np.ndarray, op: ReduceOp, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape)
    exact = op in (ReduceOp.MAX, ReduceOp.MIN, ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) or \
        want.dtype.kind in "biu"
    if exact:
        # Max and min: bit for bit, complex and NaN included (one NaN per element at most).
        assert got.tobytes() == want.tobytes(), f"{what}: {got.ravel()[:8]} != {want.ravel()[:8]}"
    else:
        # float16's sums and products round off in the ring's order; float32 less, float64 not
        # at this size.
        eps = float(np.finfo(want.dtype).eps)
        tol = 2e-2 if eps > 1e-4 else (1e-4 if eps > 1e-10 else 1e-9)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


def ops_for(dt: np.dtype) -> list[ReduceOp]:
    return [op for op in ReduceOp if op.refuses(dt) is None]


def check_all_reduce(world: ringcomm.Group, counted: list[int]) -> None:
    p, me = world.size(), world.rank()
    for dt in BOOL + INT + FLOAT + COMPLEX:
        for op in ops_for(dt):
            for shape in SHAPES if dt in (np.dtype("int32"), np.dtype("float32"),
                                          np.dtype("complex128"), np.dtype("bool")) \
                    else SHAPES[:4]:
                mine = data(me, dt, shape, op)
                got = ringcomm.all_reduce(mine, op)
                want = reference([data(r, dt, shape, op) for r in range(p)], op, p)
                same(np.asarray(got), want, op, f"all_reduce({op.value}) {dt} {shape}")
                by_name = ringcomm.all_reduce(mine, op.value)
                assert np.asarray(by_name).tobytes() == np.asarray(got).tobytes()
                counted[0] += 1
        if dt.kind == "c":
            # all_max / all_min of complex numbers: NumPy's maximum.reduce, bit for bit.
            rows = np.stack([data(r, dt, (50,), ReduceOp.MAX) for r in range(p)])
            mx = ringcomm.all_max(rows[me])
            mn = ringcomm.all_min(rows[me])
            assert mx.tobytes() == np.maximum.reduce(rows, axis=0).tobytes(), (mx, rows)
            assert mn.tobytes() == np.minimum.reduce(rows, axis=0).tobytes(), (mn, rows)
            counted[0] += 1
    # Every rank has the same bits (float sums in the ring's order included).
    x = data(me, np.dtype(np.float32), (70_000,), ReduceOp.PROD)
    y = ringcomm.all_reduce(x, "prod")
    every = ringcomm.all_gather(y.view(np.uint8)[None])
    assert all(row.tobytes() == every[0].tobytes() for row in every)
    counted[0] += 1
    # Refused before any message moves, on every rank alike.
    for dt, op, word in ((np.int32, "avg", "integers"), (np.float32, "band", "bitwise"),
                         (np.complex64, "bxor", "bitwise")):
        try:
            ringcomm.all_reduce(np.ones(3, dt), op)
        except TypeError as e:
            assert word in str(e), e
        else:
            raise AssertionError(f"all_reduce({op}) of {np.dtype(dt)} was not refused")
        counted[0] += 1
    try:
        ringcomm.all_reduce(np.ones(3), "mean")
    except ValueError as e:
        assert "'avg'" in str(e), e
    counted[0] += 1


def check_reduce_scatter(world: ringcomm.Group, counted: list[int]) -> None:
    p, me = world.size(), world.rank()
    for dt in (np.dtype(np.int64), np.dtype(np.float64), np.dtype(np.bool_)):
        for op in ops_for(dt):
            for rows in (p, 3 * p, 40_000 * p):
                shape = (rows, 2)
                got = ringcomm.reduce_scatter(data(me, dt, shape, op), op)
                whole = reference([data(r, dt, shape, op) for r in range(p)], op, p)
                m = rows // p
                same(np.asarray(got), whole[me * m:(me + 1) * m], op,
                     f"reduce_scatter({op.value}) {dt} {shape}")
                counted[0] += 1


def check_uneven(world: ringcomm.Group, counted: list[int]) -> None:
    p, me = world.size(), world.rank()
    # all_gather_v: rank r brings r rows (rank 0 none), with counts given and learned.
    for dt in (np.dtype(np.float32), np.dtype(np.bool_), np.dtype(np.int16)):
        for per in ((lambda r: r), (lambda r: 3), (lambda r: 1000 * (r + 1))):
            counts = [per(r) for r in range(p)]
            rows = [data(r, dt, (counts[r], 3), ReduceOp.SUM) for r in range(p)]
            want = np.concatenate(rows)
            for given in (counts, None):
                got = ringcomm.all_gather_v(rows[me], given)
                assert got.tobytes() == want.tobytes() and got.shape == want.shape, (counts,)
                counted[0] += 1
    # reduce_scatter_v: uneven counts with a zero, by sum, max and avg.
    counts = [(2 * r + 1) % 4 for r in range(p)]
    total = sum(counts)
    off = [sum(counts[:r]) for r in range(p + 1)]
    for op in (ReduceOp.SUM, ReduceOp.MAX, ReduceOp.AVG):
        xs = [data(r, np.dtype(np.float64), (total, 2), op) for r in range(p)]
        got = ringcomm.reduce_scatter_v(xs[me], counts, op)
        whole = reference(xs, op, p)
        same(np.asarray(got), whole[off[me]:off[me + 1]], op, f"reduce_scatter_v {op}")
        counted[0] += 1
    # all_to_all_v: rank r sends (r + 2j) % 3 rows to rank j.
    sends = [[(r + 2 * j) % 3 for j in range(p)] for r in range(p)]
    xs = [np.arange(sum(sends[r]) * 2, dtype=np.int64).reshape(-1, 2) + 1000 * r
          for r in range(p)]
    blocks = [np.split(xs[r], np.cumsum(sends[r])[:-1]) for r in range(p)]
    want = np.concatenate([blocks[i][me] for i in range(p)])
    for recv in ([sends[i][me] for i in range(p)], None):
        got = ringcomm.all_to_all_v(xs[me], sends[me], recv)
        assert got.tobytes() == want.tobytes() and got.shape == want.shape
        counted[0] += 1
    # Asynchronous, in flight together.
    w1 = ringcomm.all_gather_v(np.full((me + 1,), me), async_op=True)
    w2 = ringcomm.all_reduce(np.full(4, me + 1, np.int64), "prod", async_op=True)
    assert w1.result().tolist() == [r for r in range(p) for _ in range(r + 1)]
    assert w2.result().tolist() == [int(np.prod(np.arange(1, p + 1)))] * 4
    counted[0] += 1


def expect_mismatch(what: str, fn, word: str) -> None:
    try:
        fn()
    except MismatchError as e:
        assert word in str(e), f"{what}: {e}"
    else:
        raise AssertionError(f"{what}: no MismatchError")


def check_disagreements(world: ringcomm.Group, counted: list[int]) -> None:
    p, me = world.size(), world.rank()
    mine = np.ones((me + 1, 2), np.float32)
    right = [r + 1 for r in range(p)]
    wrong = right if me != p - 1 else [1] * p  # the last rank alone is wrong
    expect_mismatch("all_gather_v counts", lambda: ringcomm.all_gather_v(mine, wrong), "counts")
    expect_mismatch("all_gather_v dtype", lambda: ringcomm.all_gather_v(
        mine.astype(np.float64 if me == 0 else np.float32)), "dtypes")
    expect_mismatch("all_gather_v trailing shape", lambda: ringcomm.all_gather_v(
        np.ones((1, 2 + (me == 1))), None), "shapes past axis 0")
    expect_mismatch("reduce_scatter_v counts", lambda: ringcomm.reduce_scatter_v(
        np.ones((p + 1, 1)), [1] * (p - 1) + [2] if me else [2] + [1] * (p - 1)), "counts")
    expect_mismatch("reduce_scatter_v short", lambda: ringcomm.reduce_scatter_v(
        np.ones((p + (me == 0), 1)), [1] * p), "brought")
    sends = [1] * p
    recv = [1] * p if me else [2] + [1] * (p - 1)
    expect_mismatch("all_to_all_v counts", lambda: ringcomm.all_to_all_v(
        np.ones((p, 1)), sends, recv), "expects")
    expect_mismatch("all_to_all_v bad counts", lambda: ringcomm.all_to_all_v(
        np.ones((p, 1)), sends if me else [1] * (p + 1)), "non-negative integers")
    # The group is still usable after each.
    assert ringcomm.all_sum(np.ones(3))[0] == p
    counted[0] += 8


def check_new_group(world: ringcomm.Group, counted: list[int]) -> None:
    p, me = world.size(), world.rank()
    if me in (0, 1):  # made by ranks 0 and 1 alone; the others do something else meanwhile
        pair = ringcomm.new_group([1, 0], tag="pair")
        assert (pair.size(), pair.rank()) == (2, 1 - me)
        assert ringcomm.all_sum(np.full(2, me + 1), group=pair).tolist() == [3, 3]
        again = ringcomm.new_group([0, 1], tag="pair")  # the same ranks and tag: a group anew
        assert ringcomm.all_gather(np.array([me]), group=again).tolist() == [0, 1]
        got = ringcomm.all_reduce(np.array([me + 2], np.int32), "prod", group=pair)
        assert got.tolist() == [6]
        if me == 0:
            ringcomm.send(np.arange(3), 0, group=pair)
        else:
            assert ringcomm.recv(3, np.int64, 1, group=pair).tolist() == [0, 1, 2]
    elif p > 2:
        rest = ringcomm.new_group(list(range(2, p)))
        assert ringcomm.all_sum(np.ones(1), group=rest)[0] == p - 2
    try:
        ringcomm.new_group([r for r in range(p) if r != me])
    except ValueError as e:
        assert "only the members" in str(e)
    every = ringcomm.new_group(list(range(p))[::-1], tag="reversed")
    assert every.rank() == p - 1 - me
    assert ringcomm.all_gather(np.array([me]), group=every).tolist() == list(range(p))[::-1]
    ringcomm.barrier()
    counted[0] += 3


def main() -> None:
    case = sys.argv[1] if len(sys.argv) > 1 else "all"
    world = ringcomm.init(strict=True)
    counted = [0]
    check_all_reduce(world, counted)
    check_reduce_scatter(world, counted)
    check_uneven(world, counted)
    check_disagreements(world, counted)
    check_new_group(world, counted)
    print(f"ok {case} rank {world.rank()} ({counted[0]} cases, backend {world.backend})",
          flush=True)


if __name__ == "__main__":
    main()
