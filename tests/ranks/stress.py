"""Many collectives of random sizes and kinds, checked exactly: the shared-memory flags' test.

argv[1] is the seed and argv[2] the number of calls. Every rank draws the same sequence
of (op, count) and fills its input with integers it can predict for every rank, so each
result is compared bit for bit. Sizes cross the slot/chunk boundary of the shared-memory
path and reuse its alternating slots and halves in every order. Prints
`rank R: N calls ok (path, path, ...)`.
"""

import random
import sys

import numpy as np

import ringcomm

world = ringcomm.init()
R, P = world.rank(), world.size()
seed, calls = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
SIZES = [0, 1, 2, 3, 15, 1000, 8171, 8190, 16400, 70000, 300001]
OPS = ["all_sum", "all_max", "all_gather", "broadcast", "sum_scatter", "barrier"]


def data(rank: int, k: int, n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * (rank + 1) + k * 7 + rank) % 1000003


for k in range(calls):
    op, n = rng.choice(OPS), rng.choice(SIZES)
    mine = data(R, k, n)
    everyone = [data(r, k, n) for r in range(P)]
    if op == "all_sum":
        got, want = ringcomm.all_sum(mine), sum(everyone)
    elif op == "all_max":
        got, want = ringcomm.all_max(mine), np.maximum.reduce(everyone) if n else mine
    elif op == "all_gather":
        got, want = ringcomm.all_gather(mine), np.concatenate(everyone)
    elif op == "broadcast":
        root = rng.randrange(P)
        got, want = ringcomm.broadcast(mine, root=root), everyone[root]
    elif op == "sum_scatter":
        m = n // P * P
        got = ringcomm.sum_scatter(mine[:m])
        want = sum(e[:m] for e in everyone)[R * (m // P):(R + 1) * (m // P)]
    else:
        ringcomm.barrier()
        continue
    if not np.array_equal(got, want):
        bad = np.nonzero(np.asarray(got) != want)[0]
        print(f"rank {R}: call {k} {op}({n}) differs at {bad[:8]} of {n}", flush=True)
        sys.exit(1)
print(f"rank {R}: {calls} calls ok", flush=True)
