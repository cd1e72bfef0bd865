"""The interface every backend implements.

`ops.py` hands a backend C-contiguous NumPy arrays only (bfloat16 included, as
`ml_dtypes.bfloat16`), already validated for dtype support, and a backend
writes results into the arrays it is given. Every method is collective over
the backend's group except `send` and `recv`. Ranks are the backend's own
(0..size-1); `world_rank(r)` maps one of them to the world rank for messages.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Backend", "ReduceOp"]


class ReduceOp(enum.Enum):
    """Elementwise reduction of `all_reduce` and `reduce_scatter`."""

    SUM = "sum"  # on bool arrays: logical or
    MAX = "max"
    MIN = "min"

    @property
    def ufunc(self) -> np.ufunc:
        """Return the NumPy ufunc that reduces two arrays elementwise by this op."""
        return _UFUNCS[self]


_UFUNCS = {ReduceOp.SUM: np.add, ReduceOp.MAX: np.maximum, ReduceOp.MIN: np.minimum}


class Backend(ABC):
    """A process group's transport: one instance per group per process."""

    name: str = "base"

    @property
    @abstractmethod
    def rank(self) -> int:
        """Return this process's rank in the group."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Return the number of ranks in the group."""

    @abstractmethod
    def all_reduce(self, buf: np.ndarray, op: ReduceOp) -> None:
        """Reduce `buf` elementwise over all ranks, in place; every rank gets the same bits."""

    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        """Write the reduction of `src` over all ranks into `out`, leaving `src` as it was.

        `out` has `src`'s shape and dtype and may be `src` itself. A backend that
        can read its input from one buffer and write to another overrides this to
        save the copy.
        """
        if out is not src:
            np.copyto(out, src)
        self.all_reduce(out, op)

    @abstractmethod
    def all_gather(self, buf: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` (shape (size*n, ...)) with every rank's `buf` (shape (n, ...)) in rank order."""

    @abstractmethod
    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        """Reduce `buf` over ranks; rank r receives rows [r*m, (r+1)*m) in `out` (m = len(buf)//size)."""

    @abstractmethod
    def send(self, buf: np.ndarray, dst: int) -> None:
        """Send `buf` to rank `dst` (any rank but this one)."""

    @abstractmethod
    def recv(self, out: np.ndarray, src: int) -> None:
        """Receive into `out` a message that rank `src` sent with `send`."""

    @abstractmethod
    def broadcast(self, buf: np.ndarray, root: int) -> None:
        """Overwrite `buf` on every rank with root's `buf`."""

    @abstractmethod
    def barrier(self) -> None:
        """Return once every rank of the group has entered the barrier."""

    @abstractmethod
    def split(self, color: int, key: int) -> Backend:
        """Return the backend of the subgroup of ranks that passed the same color (MPI_Comm_split)."""

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release connections and threads; the backend is unusable afterwards."""
