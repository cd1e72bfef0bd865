"""Asynchronous calls that go wrong: argv[1] is the case.

- modified: with RINGCOMM_DEBUG=1 every rank changes its input while its all_sum is in flight;
  the Work raises RingcommError.
- mismatch: rank 1 queues an all_max where rank 0 queues an all_sum; both Works raise
  MismatchError.
- exit_in_flight: rank 0 queues an all_sum and returns from its program at once, never waiting;
  the call still happens (at exit), and rank 1's blocking all_sum gets the sum.
- peer_gone: rank 0 queues an all_sum and exits at once without running exit handlers
  (os._exit); rank 1's Work raises PeerError naming rank 0, within the deadline.
- concurrent_groups: rank 1 has an all_sum of a split group in flight (waiting for rank 0) and,
  1.5 s later, sends to rank 0, which waits in recv meanwhile and then makes the all_sum: no
  deadlock, and the watch must not call it one.
- scatter_roots: rank 0 scatters from root 0, rank 1 from root 1: MismatchError on both.
- a2a_shapes: all_to_all of 4 elements on rank 0 and 6 on rank 1: MismatchError on both.
- object_vs_array: all_gather_object on rank 0 against all_gather of an array on rank 1.

Each rank prints `rank R: <ErrorType or ok> after <s>s: <message>`.
"""

import os
import sys
import time

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
case = sys.argv[1]
t0 = time.monotonic()
result = "ok"
message = ""
try:
    if case == "modified":
        x = np.ones(4 << 20, dtype=np.float32)
        work = ringcomm.all_sum(x, async_op=True)
        x[0] = 5.0
        work.result()
    elif case == "mismatch":
        x = np.ones(16, dtype=np.float32)
        work = (ringcomm.all_sum if R == 0 else ringcomm.all_max)(x, async_op=True)
        work.result()
    elif case == "exit_in_flight":
        x = np.full(1 << 20, R + 1.0, dtype=np.float32)
        if R == 0:
            ringcomm.all_sum(x, async_op=True)
        else:
            time.sleep(0.5)
            message = str(ringcomm.all_sum(x)[:2])
    elif case == "peer_gone":
        x = np.ones(1 << 20, dtype=np.float32)
        if R == 0:
            ringcomm.all_sum(x, async_op=True)
            os._exit(0)
        time.sleep(0.5)
        ringcomm.all_sum(x, async_op=True).result()
    elif case == "concurrent_groups":
        g = world.split(0)
        x = np.ones(4, dtype=np.float32)
        if R == 1:
            work = ringcomm.all_sum(x, group=g, async_op=True)
            time.sleep(1.5)
            ringcomm.send(x, 0)
            message = str(work.result()[:1])
        else:
            got = ringcomm.recv((4,), np.float32, 1)
            message = str(ringcomm.all_sum(got, group=g)[:1])
    elif case == "scatter_roots":
        ringcomm.scatter(np.arange(4.0), root=R)
    elif case == "a2a_shapes":
        ringcomm.all_to_all(np.arange(4.0 + 2 * R))
    elif case == "object_vs_array":
        if R == 0:
            ringcomm.all_gather_object({"a": 1})
        else:
            ringcomm.all_gather(np.arange(3.0))
except ringcomm.RingcommError as e:
    result, message = type(e).__name__, str(e)
print(f"rank {R}: {result} after {time.monotonic() - t0:.2f}s: {message}", flush=True)
