"""The interface every backend implements, and the rules every caller keeps.

`ops.py` hands a backend C-contiguous NumPy arrays only (bfloat16 included, as
`ml_dtypes.bfloat16`), already validated for dtype support, and a backend
writes results into the arrays it is given. Every method is collective over
the backend's group except `send` and `recv`. Ranks are the backend's own
(0..size-1).

Concurrency: one call is in flight per group at a time. The caller's thread
makes the call and it returns when this rank's part is done; ranks make the
same calls in the same order, which the backend checks (`ringcomm.signature`) and
turns into MismatchError when they do not. A backend may use threads of its
own inside a call, never across calls.

A new backend implements the abstract methods; `all_reduce`, `reduce_scatter`
and `barrier` have defaults built from `all_reduce_into`, which a backend
overrides when it has a cheaper way. It registers itself in
`ringcomm/backends/__init__.py` with a module that has `create(environ,
timeout)` and `is_available()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..signature import Op, ReduceOp

__all__ = ["Backend", "ReduceOp"]


class Backend(ABC):
    """A process group's transport: one instance per group per process."""

    name: str = "base"
    # Whether send and recv may run beside a collective of the group, and beside each other
    # (other peers, other direction), each from its own thread: then an asynchronous recv
    # does not hold back a send made after it (`group.Calls`' lanes).
    concurrent_p2p: bool = False

    @property
    @abstractmethod
    def rank(self) -> int:
        """Return this process's rank in the group."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Return the number of ranks in the group."""

    @property
    def path(self) -> str:
        """Return the transport and algorithm the last call took (for benchmarks and traces)."""
        return self.name

    @property
    def core(self) -> str:
        """Return which core ran the last call: "native" (ringcomm's compiled core) or "python"."""
        return "python"

    def all_reduce(self, buf: np.ndarray, op: ReduceOp) -> None:
        """Reduce `buf` elementwise over all ranks, in place; every rank gets the same bits."""
        self.all_reduce_into(buf, buf, op)

    @abstractmethod
    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        """Write the reduction of `src` over all ranks into `out`, leaving `src` as it was.

        `out` has `src`'s shape and dtype and may be `src` itself; every rank gets
        the same bits.
        """

    def reduce_small(self, x: np.ndarray, op: ReduceOp) -> np.ndarray | None:
        """Return the reduction of NumPy array `x` over all ranks by the backend's fast path
        of small calls, or None when it has none for `x` (then the caller takes the general
        `all_reduce_into`). It checks the call as every call is checked.
        """
        return None

    def send_small(self, x: np.ndarray, dst: int) -> bool:
        """Send NumPy array `x` to rank `dst` by the backend's fast path of small messages and
        return True, or return False (nothing done) when it has none for `x`: then the caller
        takes the general `send`. The message is numbered and checked as every one is.
        """
        return False

    def recv_small(self, key: tuple, shape: object, dtype: object, src: int,
                   op: str = "recv") -> np.ndarray | None:
        """Return the array of `shape` and `dtype` from rank `src` by the fast path of small
        messages, or None (nothing done) when the backend has none: then the caller takes the
        general `recv`. `key` is hashable and names the kind (peer, dtype, shape) as given.
        """
        return None

    @abstractmethod
    def all_gather(self, buf: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` (shape (size*n, ...)) with every rank's `buf` (shape (n, ...)) in rank order."""

    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        """Reduce `buf` over ranks; rank r receives rows [r*m, (r+1)*m) in `out` (m = len(buf)//size).

        The default reduces everything and keeps this rank's rows: correct, with
        `size` times the traffic a reduce-scatter needs.
        """
        whole = np.empty_like(buf)
        self.all_reduce_into(buf, whole, op)
        m = out.size
        out.reshape(-1)[...] = whole.reshape(-1)[self.rank * m:(self.rank + 1) * m]

    def all_to_all(self, buf: np.ndarray, out: np.ndarray) -> None:
        """Send block j of `buf` (axis 0 in `size` blocks) to rank j; fill block i of `out` from rank i.

        The default gathers every rank's whole `buf`: correct, with `size` times the
        traffic a direct exchange needs.
        """
        p, r = self.size, self.rank
        n = buf.shape[0]
        every = np.empty((p * n,) + buf.shape[1:], dtype=buf.dtype)

        self._all_gather_as(buf, every, Op.ALL_TO_ALL, 0)
        m = n // p
        for i in range(p):
            out[i * m:(i + 1) * m] = every[i * n + r * m:i * n + (r + 1) * m]

    def gather(self, buf: np.ndarray, out: np.ndarray | None, root: int) -> None:
        """Fill root's `out` (shape (size*n, ...)) with every rank's `buf`; `out` is None elsewhere.

        The default is an all_gather that only the root keeps.
        """
        every = out if out is not None else np.empty(
            (self.size * buf.shape[0],) + buf.shape[1:], dtype=buf.dtype)

        self._all_gather_as(buf, every, Op.GATHER, root)

    def scatter(self, buf: np.ndarray, out: np.ndarray, root: int) -> None:
        """Fill `out` on rank r with block r of root's `buf` (axis 0 in `size` blocks).

        Every rank passes a `buf` of root's shape and dtype. The default broadcasts
        root's whole `buf`.
        """

        whole = buf.copy()
        self._broadcast_as(whole, root, Op.SCATTER)
        m = out.shape[0]
        out[...] = whole[self.rank * m:(self.rank + 1) * m]

    def subgroup(self, ranks: list[int], tag: str) -> Backend:
        """Return the group of `ranks` (ranks of this group; its rank i is ranks[i]), made by
        those ranks alone: collective over them, not over this group. Members pass the same
        `ranks` and `tag` (what tells apart two groups of the same ranks)."""
        raise NotImplementedError(f"the {self.name} backend cannot make a group of some of "
                                  "its ranks without the others; use split()")

    def _all_gather_as(self, buf: np.ndarray, out: np.ndarray, op: Op, root: int) -> None:
        """The all_gather under the defaults above; a backend that checks calls by name
        overrides it to check the call as `op` (with `root`)."""
        self.all_gather(buf, out)

    def _broadcast_as(self, buf: np.ndarray, root: int, op: Op) -> None:
        """The broadcast under `scatter`'s default; overridden like `_all_gather_as`."""
        self.broadcast(buf, root)

    @abstractmethod
    def send(self, buf: np.ndarray, dst: int) -> None:
        """Send `buf` to rank `dst` (any rank but this one)."""

    @abstractmethod
    def recv(self, out: np.ndarray, src: int) -> None:
        """Receive into `out` a message that rank `src` sent with `send`."""

    @abstractmethod
    def broadcast(self, buf: np.ndarray, root: int) -> None:
        """Overwrite `buf` on every rank with root's `buf`."""

    def barrier(self) -> None:
        """Return once every rank of the group has entered the barrier (default: a 1-byte all_reduce)."""
        token = np.zeros(1, dtype=np.uint8)
        self.all_reduce_into(token, token, ReduceOp.MAX)

    @abstractmethod
    def split(self, color: int, key: int) -> Backend:
        """Return the backend of the subgroup of ranks that passed the same color (MPI_Comm_split)."""

    def object_key(self) -> bytes | None:
        """Return the key that seals object calls' messages, or None where the transport
        itself is trusted (MPI's, one process)."""
        return None

    def peers_proved_secret(self) -> bool:
        """Return whether every peer proved a secret only the job's ranks know.

        False where the job chose to run without one (RINGCOMM_UNAUTHENTICATED): object
        calls then refuse to unpickle what peers sent.
        """
        return True

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release connections and threads; the backend is unusable afterwards."""
