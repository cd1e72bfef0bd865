"""Rank 1 dies (os._exit) in the middle of a large all_sum (argv[1] "small": in a loop of
4-byte ones); the others must raise fast.

Each survivor prints `rank R: <ErrorType> after <s>s: <message>`.
"""

import os
import sys
import threading
import time

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
small = sys.argv[1:2] == ["small"]
x = np.ones(1 if small else 8 << 20, dtype=np.float32)
ringcomm.all_sum(np.ones(4))  # connections are up
if R == 1:
    threading.Timer(0.05, lambda: os._exit(1)).start()
t0 = time.monotonic()
try:
    for _ in range(10_000_000 if small else 100):
        ringcomm.all_sum(x)
except ringcomm.RingcommError as e:
    print(f"rank {R}: {type(e).__name__} after {time.monotonic() - t0:.2f}s: {e}", flush=True)
else:
    print(f"rank {R}: no error", flush=True)
