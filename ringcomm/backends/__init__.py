"""Backends behind one interface (see base.py): single, ring, mpi."""

from .base import Backend, ReduceOp

__all__ = ["Backend", "ReduceOp"]
