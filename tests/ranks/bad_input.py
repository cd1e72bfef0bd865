"""Bad input between ranks, one case per run (argv[1]); each rank prints what it raised.

- deep_shapes: an all_sum of 12 dimensions whose last differs between ranks;
- big_object: rank 1 gathers an object past RINGCOMM_MAX_OBJECT_BYTES.
"""

import sys

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
case = sys.argv[1]
try:
    if case == "deep_shapes":
        ringcomm.all_sum(np.ones((1,) * 11 + (2 + R,), np.float32))
    elif case == "big_object":
        ringcomm.all_gather_object(b"x" * (3 << 20) if R == 1 else 1)
    else:
        raise SystemExit(f"unknown case {case!r}")
except ringcomm.RingcommError as e:
    print(f"rank {R}: {type(e).__name__}: {e}", flush=True)
else:
    print(f"rank {R}: no error", flush=True)
