"""The decode step (100 Allreduces of 16 KiB, one of 4 B) of OpenMPI through mpi4py."""

import _common
from bench_mpi import comm, make

_common.decode("mpi", comm.Get_rank(), comm.Get_size(), make)
