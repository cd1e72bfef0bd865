"""Allreduce of OpenMPI through mpi4py into a preallocated output, started by `mpirun`."""

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


if __name__ == "__main__":
    _common.run("mpi", comm.Get_rank(), comm.Get_size(), make, comm.Barrier)
