"""Rank 1 stays silent (sleeps) while the others wait on it; RINGCOMM_TIMEOUT must end the wait.

Each other rank prints `rank R: <ErrorType> after <s>s: <message>`.
"""

import sys
import time

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
ringcomm.barrier()
if R == 1:
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else 60)
t0 = time.monotonic()
try:
    ringcomm.all_sum(np.ones(4))
except ringcomm.RingcommError as e:
    print(f"rank {R}: {type(e).__name__} after {time.monotonic() - t0:.2f}s: {e}", flush=True)
else:
    print(f"rank {R}: no error", flush=True)
