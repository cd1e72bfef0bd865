"""Recognise an MPI launch from the environment, without importing mpi4py."""

from __future__ import annotations

from typing import Mapping

# World-size variables set by MPI launchers: OpenMPI, PMIx, MPICH/Hydra (PMI), Slurm's PMI.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")


def launched_size(environ: Mapping[str, str]) -> int | None:
    """Return the world size an MPI launcher announced, or None when none did."""
    for var in _SIZE_VARS:
        raw = environ.get(var)
        if raw and raw.isdigit():
            return int(raw)
    return None
