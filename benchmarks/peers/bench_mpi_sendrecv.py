"""Ping-pong of OpenMPI through mpi4py between ranks 0 and 1, started by `mpirun`.

The protocol of `ringcomm bench --op sendrecv`: float32 arrays of each size, 3
untimed round trips, then `iterations(size)` timed ones (a barrier before each
when the size exceeds 1 MiB); rank 0 prints half its median round trip.
"""

import statistics
import sys
import time

import _common
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()
if ranks < 2:
    raise SystemExit("sendrecv needs at least 2 ranks")

for nbytes in _common.sizes(sys.argv[1:]):
    count = max(1, nbytes // 4)
    x = np.ones(count, dtype=np.float32)
    y = np.zeros_like(x)

    def call(x=x, y=y):
        if rank == 0:
            comm.Send(x, dest=1)
            comm.Recv(y, source=1)
        elif rank == 1:
            comm.Recv(y, source=0)
            comm.Send(y, dest=0)

    for _ in range(3):
        call()
    if rank < 2 and not (y == 1).all():
        raise AssertionError(f"mpi sendrecv of ones gave {y[:4]}")
    times = []
    for _ in range(_common.iterations(nbytes)):
        if nbytes > (1 << 20):
            comm.Barrier()
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    if rank == 0:
        print(_common.line("mpi", ranks, count * 4, statistics.median(times) / 2, bus=1.0),
              flush=True)
