"""The MPI backend through mpi4py; `detect` recognises an MPI launch without importing it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import MPIBackend

__all__ = ["create", "is_available"]


def is_available() -> bool:
    """Return whether mpi4py is installed (and, inside an MPI launch, whether MPI starts)."""
    from . import backend

    return backend.is_available()


def create(environ: Mapping[str, str], timeout: float) -> MPIBackend:
    """Return the backend of MPI's world, checked against the launcher's environment."""
    from . import backend

    return backend.create(environ, timeout)
