"""The conformance suite: run inside every rank of a job, the same for every backend.

    python conformance.py BACKEND [MODE [CASE]]

BACKEND is ring, mpi or any; the job is started by any launcher (``ringcomm
launch``, ``mpirun``, ``torchrun``, ``srun``). MODE is one of:

- ``conformance`` (default): every op x dtype x shape class (0-d, empty,
  fewer elements than ranks, multi-dimensional, strided, transposed, large,
  and the pipelined size for one dtype per kind of reduction) on the world and
  on a split whose key reverses the ranks; any-to-any send/recv of every
  dtype; float sums bit-identical on every rank; split (two splits in use at
  once, keys, send/recv inside a split, splits of splits).
- ``chunked``: the same on the small shape classes, with the MPI backend's
  piece size shrunk to 40 bytes so that small arrays take every multi-piece
  path used beyond 1 GiB (MPI only).
- ``mismatch``: every mismatch case (or CASE alone) raises MismatchError
  naming what differed, and the group stays usable after each (MPI only; the
  ring's mismatches are tests/test_failures.py's).
- ``large``: over 2 GiB in one call (MPI counts are C ints).

Every rank asserts every result and ends with one line
``rank R/N: K cases passed (MODE, backend B)``. K counts the cases that ran;
:func:`expected_cases` derives from the tables alone how many must have run,
and the tests compare the two, so a dtype or shape skipped by mistake fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

import ringcomm
from ringcomm.arrays import bfloat16

DTYPES: list[np.dtype] = [
    np.dtype(t)
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64,
        np.float16, np.float32, np.float64, np.complex64, np.complex128,
    )
] + ([bfloat16] if bfloat16 is not None else [])

# (shape, layout): 0-d, empty, empty 2-D, fewer elements than ranks, odd length,
# multi-dimensional, non-contiguous (strided, transposed), and large.
SHAPES: list[tuple[tuple[int, ...], str]] = [
    ((), "c"), ((0,), "c"), ((0, 3), "c"), ((1,), "c"), ((7,), "c"), ((3, 4), "c"),
    ((3, 4, 5), "c"), ((5,), "strided"), ((4, 3), "transposed"), ((300_000,), "c"),
]
# The pipelined ring (over 4 MiB of traffic per rank) differs between dtypes only in its
# reduction: one dtype per kind of reduction takes it.
BIG = ((1_500_000,), "c")
BIG_DTYPES = {np.dtype(np.bool_), np.dtype(np.int8), np.dtype(np.float16), np.dtype(np.float32),
              np.dtype(np.complex128)} | ({bfloat16} if bfloat16 is not None else set())
# The chunked mode sends 40-byte pieces: only shapes this small keep it within seconds.
CHUNKED_MAX_ELEMENTS = 64
MESSAGE = 300_000  # elements of the large message sent around the ring
MISMATCH_CASES = ("op", "dtype", "shape", "root", "barrier", "recv")
MODES = ("conformance", "chunked", "mismatch", "large")

RANK, SIZE = 0, 1
cases = 0


# -- the expected count, from the tables alone ----------------------------------------------


def shapes_for(dt: np.dtype, mode: str) -> list[tuple[tuple[int, ...], str]]:
    """Return the (shape, layout) classes that `dt` is checked on in `mode`."""
    if mode == "chunked":
        return [(s, lay) for s, lay in SHAPES if int(np.prod(s)) <= CHUNKED_MAX_ELEMENTS]
    return SHAPES + ([BIG] if dt in BIG_DTYPES else [])


def _group_cases(p: int, mode: str) -> int:
    """Return the cases `group_suite` runs on one rank of a group of `p` ranks."""
    n = 0
    for dt in DTYPES:
        for shape, _ in shapes_for(dt, mode):
            # all_sum, all_max, all_min, input untouched, all_gather, a broadcast from every
            # root, sum_scatter of a scatter-shaped input, and of this one when it divides;
            # all_to_all of the scatter-shaped input, a gather and a scatter from every root.
            n += 5 + p + 1 + (1 if shape and shape[0] % p == 0 else 0) + 1 + 2 * p
        n += 4 * (p - 1)  # two sends to and two receives from every other rank
    n += 1 + p + (1 if p > 1 else 0)  # all_gather_object, broadcast_object, send/recv_object
    n += 3  # non-contiguous all_sum
    if p > 1 and mode != "chunked":
        n += 1  # the large message around the ring
    return n


def expected_cases(mode: str, rank: int, size: int, case: str | None = None) -> int:
    """Return how many cases rank `rank` of `size` must pass in `mode` (CASE: one mismatch)."""
    if mode in ("conformance", "chunked"):
        world_and_reversed = 2 * _group_cases(size, mode)
        return world_and_reversed + 2 + 9 + (1 if size > 1 else 0)  # bits, splits, shift
    if mode == "mismatch":
        if size == 1:
            return 0
        names = [case] if case else list(MISMATCH_CASES)
        raised = sum(1 for c in names if c != "recv" or rank == size - 1)
        return raised + (0 if case else len(names))  # all_sum after each
    if mode == "large":
        return 3 + (1 if size > 1 and rank == 1 else 0)
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


# -- checking --------------------------------------------------------------------------------


def check(ok: bool, what: str) -> None:
    """Count a case; raise AssertionError naming it when it fails."""
    global cases
    if not ok:
        raise AssertionError(f"rank {RANK}/{SIZE}: {what}")
    cases += 1


def same(got: object, want: np.ndarray, what: str) -> None:
    """Check dtype, shape and every value exactly (16-bit floats compared widened)."""
    got = np.asarray(got)
    want = np.asarray(want)
    wide = np.complex128 if want.dtype.kind == "c" else np.float64
    check(got.dtype == want.dtype and got.shape == want.shape
          and np.array_equal(got.astype(wide), want.astype(wide)),
          f"{what}: got {got.dtype} {got.shape} {got.ravel()[:8]}, "
          f"expected {want.dtype} {want.shape} {want.ravel()[:8]}")


def value(dt: np.dtype, shape: tuple[int, ...], r: int, layout: str = "c") -> np.ndarray:
    """Return rank r's input: small integers, negative ones too, exact in every dtype summed
    over 4 ranks; complex values have an imaginary part."""
    if layout == "strided":
        return value(dt, (shape[0] * 2, *shape[1:]), r)[::2]
    if layout == "transposed":
        return value(dt, shape[::-1], r).T
    i = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if dt == np.bool_:
        return (i + r) % 3 == 0
    base = (i * 7 + r * 3) % 5 + r
    if dt.kind in "if" or dt == bfloat16:
        base = base - 3
    if dt.kind == "c":
        return (base + 1j * ((base + r) % 3)).astype(dt)
    return base.astype(dt)


def reduced(stack: list[np.ndarray], how: str, dt: np.dtype) -> np.ndarray:
    """Return the sum (logical or for bool), max or min of `stack`, computed wide."""
    wide = np.stack([a.astype(np.complex128 if dt.kind == "c" else np.float64) for a in stack])
    if how == "sum":
        out = wide.sum(axis=0)
        return (out != 0) if dt == np.bool_ else out.astype(dt)
    return (wide.max(axis=0) if how == "max" else wide.min(axis=0)).astype(dt)


def scatter_shape(shape: tuple[int, ...], p: int) -> tuple[int, ...]:
    """Return a shape like `shape` whose rows divide among p ranks: p*k rows, k >= 2."""
    if len(shape) > 1:
        return (2 * p, *shape[1:])
    rows = shape[0] if shape and shape[0] > 1 else 2
    return (p * rows,)


# -- the conformance mode --------------------------------------------------------------------


def group_suite(group: ringcomm.Group, ranks: list[int], tag: str, mode: str) -> None:
    """Check every op on `group`, whose members have world ranks `ranks`."""
    r, p = group.rank(), group.size()
    me = ranks[r]
    reducers: dict[str, Callable[..., np.ndarray]] = {
        "sum": ringcomm.all_sum, "max": ringcomm.all_max, "min": ringcomm.all_min,
    }
    for dt in DTYPES:
        for shape, layout in shapes_for(dt, mode):
            xs = [value(dt, shape, q, layout) for q in ranks]
            x = xs[r]
            before = x.copy()
            name = f"{tag} {dt} {shape} {layout}"
            for how, fn in reducers.items():  # complex max and min: NumPy's order
                same(fn(x, group=group), reduced(xs, how, dt), f"all_{how} {name}")
            same(x, before, f"input untouched {name}")
            rows = [a.reshape(1) if a.ndim == 0 else a for a in xs]
            same(ringcomm.all_gather(x, group=group), np.concatenate(rows), f"all_gather {name}")
            for root in range(p):
                same(ringcomm.broadcast(x, root, group=group), xs[root],
                     f"broadcast root {root} {name}")
            if shape and shape[0] % p == 0:
                m = shape[0] // p
                same(ringcomm.sum_scatter(x, group=group),
                     reduced(xs, "sum", dt)[r * m:(r + 1) * m], f"sum_scatter {name}")
            sshape = scatter_shape(shape, p)
            scat = [value(dt, sshape, q, layout) for q in ranks]
            k = sshape[0] // p
            same(ringcomm.sum_scatter(scat[r], group=group),
                 reduced(scat, "sum", dt)[r * k:(r + 1) * k], f"sum_scatter {tag} {dt} {sshape}")
            blocks = [a.reshape((p, k) + sshape[1:]) for a in scat]
            same(ringcomm.all_to_all(scat[r], group=group),
                 np.concatenate([blocks[q][r] for q in range(p)]), f"all_to_all {tag} {dt} {sshape}")
            for root in range(p):
                want = np.concatenate(rows) if r == root else np.empty((0,) + rows[r].shape[1:], dt)
                same(ringcomm.gather(x, root, group=group), want, f"gather root {root} {name}")
                same(ringcomm.scatter(scat[r], root, group=group), scat[root][r * k:(r + 1) * k],
                     f"scatter root {root} {tag} {dt} {sshape}")
        point_to_point(group, ranks, dt, tag)
    objects(group, ranks, tag)
    # Non-contiguous views of one array: every op reads them as the caller sees them.
    base = np.arange(4 * 6 * p, dtype=np.float64).reshape(4 * p, 6)
    want = sum(base + q for q in ranks)
    for view in (lambda a: a[::2, ::3], lambda a: a.T, lambda a: a[:, 1]):
        x = view(base + me)
        assert not x.flags.c_contiguous or x.ndim == 1
        same(ringcomm.all_sum(x, group=group), view(want), f"all_sum non-contiguous {x.shape}")
    if p > 1 and mode != "chunked":  # a large message, and recv_like, around the ring
        big = np.arange(MESSAGE, dtype=np.float32) + me
        src = (r - 1) % p
        if r % 2 == 0:
            ringcomm.send(big, (r + 1) % p, group=group)
            got = ringcomm.recv_like(big, src, group=group)
        else:
            got = ringcomm.recv_like(big, src, group=group)
            ringcomm.send(big, (r + 1) % p, group=group)
        same(got, np.arange(MESSAGE, dtype=np.float32) + ranks[src], f"recv_like {tag} large")
    ringcomm.barrier(group=group)


def objects(group: ringcomm.Group, ranks: list[int], tag: str) -> None:
    """The object calls: pickled Python values of different sizes on different ranks."""
    r, p = group.rank(), group.size()

    def thing(q: int) -> dict:
        return {"rank": q, "tag": tag, "items": list(range(3 * q)), "blob": b"x" * (q * 1000)}

    check(ringcomm.all_gather_object(thing(ranks[r]), group=group) == [thing(q) for q in ranks],
          f"all_gather_object {tag}")
    for root in range(p):
        got = ringcomm.broadcast_object(thing(ranks[root]) if r == root else None, root,
                                        group=group)
        check(got == thing(ranks[root]), f"broadcast_object root {root} {tag}: got {got!r:.80}")
    if p > 1:
        to, frm = (r + 1) % p, (r - 1) % p
        if r % 2 == 0:
            ringcomm.send_object(thing(ranks[r]), to, group=group)
            got = ringcomm.recv_object(frm, group=group)
        else:
            got = ringcomm.recv_object(frm, group=group)
            ringcomm.send_object(thing(ranks[r]), to, group=group)
        check(got == thing(ranks[frm]), f"recv_object from {frm} {tag}")


def point_to_point(group: ringcomm.Group, ranks: list[int], dt: np.dtype, tag: str) -> None:
    """Send between every ordered pair of ranks, in an order that cannot deadlock: a
    non-contiguous array with recv, and a row of it with recv_like."""
    r, p = group.rank(), group.size()
    for a in range(p):
        for b in range(p):
            if a == b:
                continue
            x = value(dt, (3, 2), ranks[a] * 10 + ranks[b], "transposed")
            if r == a:
                row = x[0]
                check(ringcomm.send(x, b, group=group) is x, f"send {tag} {dt} returns its input")
                check(ringcomm.send(row, b, group=group) is row, f"send {tag} {dt} row")
            elif r == b:
                same(ringcomm.recv(x.shape, dt, a, group=group), x, f"recv {tag} {dt} {a}->{b}")
                same(ringcomm.recv_like(x[0], a, group=group), x[0],
                     f"recv_like {tag} {dt} {a}->{b}")


def same_bits_everywhere() -> None:
    """Float sums must be bit-identical on every rank."""
    rng = np.random.default_rng(RANK)
    for n in (5, 100_000):
        y = ringcomm.all_sum(rng.standard_normal(n).astype(np.float32))
        everyone = ringcomm.all_gather(y.view(np.uint32)[None])
        check(bool((everyone == everyone[0]).all()), f"all_sum of {n} floats differs between ranks")


def splits(world: ringcomm.Group) -> ringcomm.Group:
    """Check split; return the split whose key reverses the ranks."""
    n = SIZE
    half = world.split(RANK // 2)
    check(half.size() == min(2, n - RANK // 2 * 2), f"split(rank // 2) size {half.size()}")
    check(half.rank() == RANK % 2, f"split(rank // 2) rank {half.rank()}")
    parity = world.split(RANK % 2)
    # Two splits in use at once, each with its own members.
    members = [q for q in range(n) if q // 2 == RANK // 2]
    same(ringcomm.all_sum(np.array([RANK], np.int64), group=half),
         np.array([sum(members)], np.int64), "all_sum in split(rank // 2)")
    members = [q for q in range(n) if q % 2 == RANK % 2]
    same(ringcomm.all_gather(np.array([RANK], np.int32), group=parity),
         np.array(members, np.int32), "all_gather in split(rank % 2)")
    backwards = world.split(0, key=n - RANK)
    check(backwards.rank() == n - 1 - RANK, f"split by key: rank {backwards.rank()}")
    same(ringcomm.all_gather(np.array([RANK]), group=backwards), np.arange(n)[::-1],
         "all_gather in split by key")
    if n > 1:  # send/recv inside a split use the split's ranks: a shift around it
        g, gr = backwards, backwards.rank()
        right, left = (gr + 1) % n, (gr - 1) % n
        mine = np.arange(3.0) + RANK
        if gr % 2 == 0:
            ringcomm.send(mine, right, group=g)
            got = ringcomm.recv((3,), np.float64, left, group=g)
        else:
            got = ringcomm.recv((3,), np.float64, left, group=g)
            ringcomm.send(mine, right, group=g)
        same(got, np.arange(3.0) + (n - 1 - left), "recv in split by key")
    quarter = half.split(half.rank())
    check(quarter.size() == 1, f"split of split size {quarter.size()}")
    same(ringcomm.all_sum(np.array([RANK]), group=quarter), np.array([RANK]), "split of split")
    inner = half.split(0)
    same(ringcomm.all_sum(np.ones(2), group=inner), np.full(2, float(half.size())),
         "split of split, one color")
    return backwards


def conformance(world: ringcomm.Group, mode: str) -> None:
    group_suite(world, list(range(SIZE)), "world", mode)
    same_bits_everywhere()
    backwards = splits(world)
    group_suite(backwards, list(reversed(range(SIZE))), "reversed", mode)
    ringcomm.barrier()


# -- the MPI modes ---------------------------------------------------------------------------


def expect_mismatch(call: Callable[[], object], what: str, words: list[str]) -> None:
    try:
        call()
    except ringcomm.MismatchError as e:
        text = str(e)
        check(all(w in text for w in words), f"{what}: message {text!r} lacks one of {words}")
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

    cases_ = {
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
    assert tuple(cases_) == MISMATCH_CASES
    return cases_


def mismatch(only: str | None = None) -> None:
    """Run one mismatch case, or all of them checking the group stays usable after each."""
    if SIZE == 1:
        return
    table = mismatch_cases(SIZE)
    for name in [only] if only else list(table):
        table[name]()
        if not only:  # MPI keeps the group usable after a mismatch
            same(ringcomm.all_sum(np.ones(3)), np.full(3, float(SIZE)), f"all_sum after {name}")


def large() -> None:
    """Move more than 2 GiB in one call (MPI counts are C ints)."""
    n = SIZE
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
    case = argv[3] if len(argv) > 3 else None
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; expected one of {MODES}")
    world = ringcomm.init(backend=backend, strict=backend != "any")
    RANK, SIZE = world.rank(), world.size()
    if mode == "chunked":
        from ringcomm.backends.mpi import backend as mpi

        mpi._CHUNK_BYTES = 40  # small arrays now take every multi-piece path
    if mode == "mismatch":
        mismatch(case)
    elif mode == "large":
        large()
    else:
        conformance(world, mode)
    print(f"rank {RANK}/{SIZE}: {cases} cases passed ({mode}, backend {world.backend})",
          flush=True)


if __name__ == "__main__":
    main(sys.argv)
