"""send/recv between two ranks of one host on every path a message can take.

Small messages move whole through the link's channel in one call of the compiled core where
it is built; a full channel, a message not there yet, a header that differs and a large
message take the Python link, with the same numbering. Prints `ok p2p rank R (core)`.
"""

import sys
import time

import numpy as np

import ringcomm
from ringcomm import native

world = ringcomm.init()
R, P = world.rank(), world.size()
assert P == 2, P
peer = 1 - R
backend = world._backend
built = native.PATH == "native"


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"rank {R}: {what}")


def where() -> tuple[str, str]:
    return backend.path, backend.core


# 1. The message is there before the receive: one call of the channel takes it.
if R == 0:
    ringcomm.send(np.arange(4, dtype=np.float32), 1)
ringcomm.barrier()
if R == 1:
    got = ringcomm.recv((4,), np.float32, 0)
    check(got.tolist() == [0, 1, 2, 3], f"recv after the send: {got}")
    check(where() == ("shm-p2p", "native" if built else "python"), f"recv path {where()}")

# 2. The receive comes first and waits longer than the core's short wait: the link's wait.
if R == 0:
    time.sleep(0.05)
    ringcomm.send(np.full(3, 7, np.int64), 1)
else:
    got = ringcomm.recv(3, np.int64, 0)
    check(got.tolist() == [7, 7, 7], f"late message: {got}")
    check(where() == ("shm-p2p", "python"), f"late message path {where()}")

# 3. More small messages than the channel holds, sent before any is read, then a large one
# and small ones after it: every one arrives whole and in order, whatever path it took.
COUNT, N = 400, 4096  # 16 KiB each
if R == 0:
    for k in range(COUNT):
        ringcomm.send(np.full(N, k, np.float32), 1)
    ringcomm.send(np.arange(1 << 18, dtype=np.float64), 1)  # 2 MiB: the link's pipeline
    for k in range(50):
        ringcomm.send(np.array([k], np.int16), 1)
else:
    time.sleep(0.3)  # the sender fills the channel and waits for room
    for k in range(COUNT):
        got = ringcomm.recv_like(np.empty(N, np.float32), 0)
        check(bool((got == k).all()), f"message {k}: {got[:4]}")
    big = ringcomm.recv((1 << 18,), np.float64, 0)
    check(bool((big == np.arange(1 << 18)).all()), "the 2 MiB message")
    for k in range(50):
        check(ringcomm.recv((1,), np.int16, 0).tolist() == [k], f"small message {k} after it")

# 4. Both ways at once: each rank sends, then receives (the channels hold both).
for k in range(100):
    ringcomm.send(np.array([R, k], np.int32), peer)
    got = ringcomm.recv((2,), np.int32, peer)
    check(got.tolist() == [peer, k], f"exchange {k}: {got}")

# 5. A header that differs (the same bytes, another shape) is a MismatchError naming both,
# and nothing of the message is lost to the check.
if R == 0:
    ringcomm.send(np.ones((2, 3), np.float32), 1)
else:
    time.sleep(0.05)  # the message is in the channel: the core sees the header differ
    try:
        ringcomm.recv((3, 2), np.float32, 0)
    except ringcomm.MismatchError as e:
        check("(2, 3)" in str(e) and "(3, 2)" in str(e) and "rank 0" in str(e), str(e))
    else:
        check(False, "a recv of another shape returned")
print(f"ok p2p rank {R} ({native.PATH})", flush=True)
