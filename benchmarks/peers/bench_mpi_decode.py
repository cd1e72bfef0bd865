"""The decode step (100 Allreduces of 16 KiB, one of 4 B) of OpenMPI through mpi4py."""

import _common
import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD


def make(count):
    x = np.ones(count, dtype=np.float32)
    y = np.empty_like(x)

    def call():
        comm.Allreduce(x, y, op=MPI.SUM)
    return call, lambda: float(y[0]), None


_common.decode("mpi", comm.Get_rank(), comm.Get_size(), make)
