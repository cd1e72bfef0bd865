"""Strangers drip bytes into rank 1's listener; then ranks 0 and 1 make their first send/recv.

Each stranger sends the handshake's magic and then one byte every 0.4 s, as slowly as a
per-receive timeout would allow forever. The first send/recv needs a new connection (and its
handshake) from rank 0 to rank 1 while they are there: it must go through at once.
"""

import json
import os
import socket
import threading
import time

import numpy as np

import ringcomm
from ringcomm.transport import handshake
from ringcomm.transport.net import parse_address

STRANGERS = 40
world = ringcomm.init()
R = world.rank()
ringcomm.barrier()
if R == 0:
    with open(os.environ["RINGCOMM_HOSTFILE"]) as f:
        addr = parse_address(json.load(f)[1][0])
    socks = [socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(STRANGERS)]
    for s in socks:
        s.sendall(handshake.MAGIC)
    stop = threading.Event()
    held = []

    def drip() -> None:
        while not stop.wait(0.4):
            for s in socks:
                try:
                    s.send(b"x")
                except OSError:
                    pass

    threading.Thread(target=drip, daemon=True).start()
    time.sleep(0.5)
    t0 = time.monotonic()
    ringcomm.send(np.arange(4.0), 1)
    print(f"rank 0: first send took {time.monotonic() - t0:.2f} s", flush=True)
    # Every stranger is dropped at its handshake's deadline (5 s from its accept), dripping or not.
    deadline = time.monotonic() + 10
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while s.recv(64):
                pass
            held.append(False)
        except (ConnectionResetError, BrokenPipeError):
            held.append(False)
        except TimeoutError:
            held.append(True)
    stop.set()
    print(f"rank 0: strangers still held after 10 s: {sum(held)} of {STRANGERS}", flush=True)
else:
    got = ringcomm.recv((4,), np.float64, 0)
    assert (got == np.arange(4.0)).all()
    print("rank 1: received", flush=True)
ringcomm.barrier()
