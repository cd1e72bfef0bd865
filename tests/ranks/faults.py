"""Injected faults, one per run: every rank prints what it raised and after how long.

argv[1] is the fault:
- recv_vs_sum, skip_then_p2p, recv_recv, send_vs_sum: a send/recv against a
  collective, or two receives waiting on each other (rank 1 is the odd one);
- send_send: two ranks each send 64 MiB to the other before receiving;
- blocked_send: rank 0 sends 64 MiB to rank 1, which sleeps (argv[2] seconds) before its recv;
- frozen: rank 1 stops itself (SIGSTOP) before the second all_sum, for argv[2] seconds;
- kill: rank `victim` exits at op number `at` of a random sequence drawn from
  `seed` (argv[2]); every rank draws the same sequence;
- kill9: rank 1 sends itself SIGKILL 0.3 s into a loop of 16 MiB all_sums (mid-collective);
- strangers: rank 0 opens 200 silent connections to rank 1, then the job runs
  an all_sum; rank 1 reports its thread count while they are open.

Each rank prints `rank R: <ErrorType> after <s>s: <message>` (and the error on stderr) and
exits 1, or prints
`rank R: ok ...`.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import ringcomm

world = ringcomm.init()
R, P = world.rank(), world.size()
fault = sys.argv[1]
x = np.ones(4, dtype=np.float32)
ringcomm.barrier()


def report(t0: float, error: BaseException | None, extra: str = "") -> None:
    took = time.monotonic() - t0
    if error is None:
        print(f"rank {R}: ok after {took:.2f}s{extra}", flush=True)
    else:
        print(f"rank {R}: {type(error).__name__} after {took:.2f}s: {error}", flush=True)


def random_ops(seed: int) -> None:
    """Run 200 collectives drawn from `seed`; rank `victim` exits at op number `at`."""
    rng = random.Random(seed)
    victim, at = rng.randrange(P), rng.randrange(1, 200)
    if R == 0:
        print(f"seed {seed}: rank {victim} exits at op {at}", flush=True)
    for i in range(200):
        n = rng.choice([1, 7, 1000, 300_000])
        op = rng.choice(["all_sum", "all_gather", "broadcast", "all_max", "barrier"])
        if i == at and R == victim:
            os._exit(3)
        a = np.full(n, R + 1.0, dtype=np.float32)
        if op == "barrier":
            ringcomm.barrier()
        elif op == "broadcast":
            ringcomm.broadcast(a, root=i % P)
        else:
            getattr(ringcomm, op)(a)


t0 = time.monotonic()
extra = ""
try:
    if fault == "recv_vs_sum":
        if R == 1:
            ringcomm.recv((4,), np.float32, 0)
        else:
            ringcomm.all_sum(x)
    elif fault == "skip_then_p2p":  # rank 1 skips the all_sum, then 0 sends to 1
        if R != 1:
            ringcomm.all_sum(x)
        if R == 0:
            ringcomm.send(x, 1)
        elif R == 1:
            ringcomm.recv_like(x, 0)
    elif fault == "recv_recv":
        ringcomm.recv_like(x, (R + 1) % P)
    elif fault == "send_vs_sum":
        if R == 1:
            ringcomm.send(np.ones(16 << 20, np.float32), 0)
        else:
            ringcomm.all_sum(x)
    elif fault == "send_send":
        big = np.ones(16 << 20, np.float32)
        t0 = time.monotonic()
        ringcomm.send(big, (R + 1) % P)
        ringcomm.recv_like(big, (R - 1) % P)
    elif fault == "blocked_send":
        big = np.ones(16 << 20, np.float32)
        t0 = time.monotonic()
        if R == 0:
            ringcomm.send(big, 1)
        elif R == 1:
            time.sleep(float(sys.argv[2]))
            ringcomm.recv_like(big, 0)
    elif fault == "frozen":
        ringcomm.all_sum(x)
        t0 = time.monotonic()
        if R == 1:  # frozen for argv[2] seconds: a child sends SIGCONT, then exits
            subprocess.Popen(["sh", "-c", f"sleep {float(sys.argv[2])}; kill -CONT {os.getpid()}"])
            os.kill(os.getpid(), signal.SIGSTOP)
        ringcomm.all_sum(x)
    elif fault == "kill":
        random_ops(int(sys.argv[2]))
    elif fault == "kill9":
        big = np.ones(4 << 20, dtype=np.float32)
        if R == 1:
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
        t0 = time.monotonic()
        while True:
            ringcomm.all_sum(big)
    elif fault == "strangers":
        socks = []
        if R == 0:
            with open(os.environ["RINGCOMM_HOSTFILE"]) as f:
                host, _, port = json.load(f)[1][0].rpartition(":")
            socks = [socket.create_connection((host.strip("[]"), int(port)), timeout=5)
                     for _ in range(200)]
        ringcomm.barrier()
        time.sleep(0.5)
        extra = f", threads {threading.active_count()}"
        # Past the strangers' first-bytes deadline (1 s from their accept), so that rank 1 has
        # dropped them, and said so, before the job ends.
        time.sleep(1.0)
        ringcomm.barrier()
        t0 = time.monotonic()
        y = ringcomm.all_sum(np.full(10, R + 1.0))
        assert (y == P * (P + 1) / 2).all(), y
        for s in socks:
            s.close()
    else:
        raise SystemExit(f"unknown fault {fault!r}")
except ringcomm.RingcommError as e:
    report(t0, e)
    sys.exit(f"rank {R}: {type(e).__name__}: {e}")  # on stderr too, as an uncaught error would be
report(t0, None, extra)
