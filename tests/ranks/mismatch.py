"""Rank 1 makes a different call from the others; every rank must raise MismatchError.

argv[1]: shape | dtype | op | skip | root. Each rank prints `rank R: <ErrorType>: <message>`.
"""

import sys
import time

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
mode = sys.argv[1]
size = 1_500_000 if "large" in sys.argv else 10  # the bandwidth path or the latency path
x = np.ones(size, dtype=np.float32)
if R == 1:
    if mode == "shape":
        x = np.ones(size + 7, dtype=np.float32)
    elif mode == "dtype":
        x = x.astype(np.float64)
t0 = time.monotonic()
try:
    if mode == "root":
        ringcomm.broadcast(x, root=1 if R == 1 else 0)  # rank 1 thinks it is the root
    elif R == 1 and mode == "op":
        ringcomm.all_gather(x)
    elif R == 1 and mode == "skip":
        ringcomm.all_max(x)  # rank 1 skipped the all_sum the others make first
    else:
        ringcomm.all_sum(x)
        if mode == "skip":
            ringcomm.all_max(x)
except ringcomm.RingcommError as e:
    print(f"rank {R}: {type(e).__name__} after {time.monotonic() - t0:.2f}s: {e}", flush=True)
else:
    print(f"rank {R}: no error", flush=True)
