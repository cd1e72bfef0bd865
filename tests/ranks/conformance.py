"""In-rank conformance cases: every op x dtype x shape class, split groups, any-to-any messages.

Run inside a launched job (`ringcomm launch -n N python conformance.py [BACKEND]`
or `mpirun -n N python conformance.py mpi`). Every rank asserts on every
result and prints one line `rank R/N: K cases passed` at the end.
"""

from __future__ import annotations

import sys

import numpy as np

import ringcomm

try:
    from ml_dtypes import bfloat16
except ImportError:  # bfloat16 cases need ml_dtypes
    bfloat16 = None

backend = sys.argv[1] if len(sys.argv) > 1 else "any"
world = ringcomm.init(backend=backend)
R, P = world.rank(), world.size()
cases = 0

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128]
if bfloat16 is not None:
    DTYPES.append(bfloat16)
# Shape classes: 0-d, empty, fewer elements than ranks, multi-dimensional, and a large one.
SHAPES = [(), (0,), (1,), (3, 4, 5), (300_000,)]
# The pipelined ring (over 4 MiB of traffic per rank) differs between dtypes only in its
# reduction: one dtype per kind of reduction takes it.
BIG = (1_500_000,)
BIG_DTYPES = {np.dtype(np.bool_), np.dtype(np.int8), np.dtype(np.float16), np.dtype(np.float32),
              np.dtype(np.complex128)} | ({np.dtype(bfloat16)} if bfloat16 is not None else set())


def value(shape: tuple, rank: int, dt: np.dtype) -> np.ndarray:
    """Return rank's contribution: small integers, exact in every dtype."""
    n = int(np.prod(shape)) if shape else 1
    base = (np.arange(n) % 7 + 3 * rank) % 11
    if dt == np.bool_:
        return ((np.arange(n) + rank) % 3 == 0).reshape(shape)
    return base.astype(dt).reshape(shape)


def check(name: str, got, want) -> None:
    global cases
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert np.array_equal(got.astype(np.float64) if got.dtype == bfloat16 else got,
                          want.astype(np.float64) if want.dtype == bfloat16 else want), (
        f"rank {R}: {name}: got {got.ravel()[:6]} want {want.ravel()[:6]}")
    cases += 1


def as_rows(v: np.ndarray) -> np.ndarray:
    """Return `v` as all_gather counts it: a 0-d array is one row."""
    return v.reshape(1) if v.ndim == 0 else v


def scatter_shape(shape: tuple, p: int) -> tuple:
    """Return a shape like `shape` whose rows divide among p ranks: p*k rows, k >= 2."""
    if len(shape) > 1:
        return (2 * p, *shape[1:])
    rows = shape[0] if shape and shape[0] > 1 else 2
    return (p * rows,)


def reduce_all(shape, dt, fn, group_ranks):
    vals = [value(shape, r, dt) for r in group_ranks]
    out = vals[0]
    for v in vals[1:]:
        out = fn(out, v)
    return np.asarray(out, dtype=dt).reshape(shape)


def collectives(group: ringcomm.Group, ranks: list[int], tag: str) -> None:
    """Check every collective on `group`, whose members have world ranks `ranks`."""
    r, p = group.rank(), group.size()
    me = ranks[r]
    for dt in map(np.dtype, DTYPES):
        for shape in SHAPES + ([BIG] if dt in BIG_DTYPES else []):
            x = value(shape, me, dt)
            name = f"{tag} {dt} {shape}"
            add = np.logical_or if dt == np.bool_ else np.add
            check(f"all_sum {name}", ringcomm.all_sum(x, group=group),
                  reduce_all(shape, dt, add, ranks))
            if dt.kind == "c":
                for fn in (ringcomm.all_max, ringcomm.all_min):
                    try:
                        fn(x, group=group)
                    except TypeError:
                        pass
                    else:
                        raise AssertionError(f"{fn.__name__} on complex did not raise")
            else:
                check(f"all_max {name}", ringcomm.all_max(x, group=group),
                      reduce_all(shape, dt, np.maximum, ranks))
                check(f"all_min {name}", ringcomm.all_min(x, group=group),
                      reduce_all(shape, dt, np.minimum, ranks))
            check(f"all_gather {name}", ringcomm.all_gather(x, group=group),
                  np.concatenate([as_rows(value(shape, q, dt)) for q in ranks]))
            root = p - 1
            check(f"broadcast {name}", ringcomm.broadcast(x, root=root, group=group),
                  value(shape, ranks[root], dt))
            sshape = scatter_shape(shape, p)
            full = reduce_all(sshape, dt, add, ranks)
            k = sshape[0] // p
            check(f"sum_scatter {tag} {dt} {sshape}",
                  ringcomm.sum_scatter(value(sshape, me, dt), group=group), full[r * k:(r + 1) * k])
    # Non-contiguous inputs: every op reads them as the caller sees them.
    base = np.arange(4 * 6 * p, dtype=np.float64).reshape(4 * p, 6) + me
    for x in (base[::2, ::3], base.T, base[:, 1]):
        want = sum(np.arange(4 * 6 * p, dtype=np.float64).reshape(4 * p, 6) + q for q in ranks)
        sub = want[::2, ::3] if x.shape == base[::2, ::3].shape else (
            want.T if x.shape == base.T.shape else want[:, 1])
        check(f"all_sum non-contiguous {x.shape}", ringcomm.all_sum(x, group=group), sub)
        assert not x.flags.c_contiguous or x.ndim == 1
    ringcomm.barrier(group=group)


def messages(group: ringcomm.Group, tag: str) -> None:
    """Every rank sends to every other rank, in an order that cannot deadlock."""
    r, p = group.rank(), group.size()
    for dst in range(p):
        for src in range(p):
            if src == dst:
                continue
            payload = np.full((3, 2), 100 * src + dst, dtype=np.int32)
            if r == src:
                assert ringcomm.send(payload, dst, group=group) is payload
            elif r == dst:
                check(f"recv {tag} {src}->{dst}", ringcomm.recv((3, 2), np.int32, src, group=group),
                      payload)
    if p > 1:  # a large message, and recv_like, around the ring
        big = np.arange(300_000, dtype=np.float32) + r
        src = (r - 1) % p
        if r % 2 == 0:
            ringcomm.send(big, (r + 1) % p, group=group)
            got = ringcomm.recv_like(big, src, group=group)
        else:
            got = ringcomm.recv_like(big, src, group=group)
            ringcomm.send(big, (r + 1) % p, group=group)
        check(f"recv_like {tag}", got, np.arange(300_000, dtype=np.float32) + src)


def same_bits_everywhere() -> None:
    """Float sums must be bit-identical on every rank."""
    rng = np.random.default_rng(R)
    for n in (5, 100_000):
        y = ringcomm.all_sum(rng.standard_normal(n).astype(np.float32))
        everyone = ringcomm.all_gather(y.view(np.uint32)[None])
        assert (everyone == everyone[0]).all(), "all_sum differs between ranks"
        global cases
        cases += 1


collectives(world, list(range(P)), "world")
messages(world, "world")
same_bits_everywhere()

# split: halves by rank // 2, then the "mixed" case on both splits at once.
half = world.split(R // 2)
assert half.size() == min(2, P - 2 * (R // 2)) and half.rank() == R % 2
parity = world.split(R % 2)
check("split mixed all_sum", ringcomm.all_sum(np.array([R], dtype=np.int64), group=half),
      np.array([sum(q for q in range(P) if q // 2 == R // 2)], dtype=np.int64))
check("split mixed all_gather", ringcomm.all_gather(np.array([R]), group=parity),
      np.array([q for q in range(P) if q % 2 == R % 2]))
# key reverses the order; a split of a split works too.
rev = world.split(0, key=P - R)
assert rev.rank() == P - 1 - R, (rev.rank(), R)
collectives(rev, list(reversed(range(P))), "reversed")
messages(rev, "reversed")
quarter = half.split(half.rank())
assert quarter.size() == 1
check("split of split", ringcomm.all_sum(np.array([R]), group=quarter), np.array([R]))
ringcomm.barrier()
print(f"rank {R}/{P}: {cases} cases passed", flush=True)
