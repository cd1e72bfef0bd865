"""A pool of large result buffers whose pages stay mapped from one collective to the next.

Allocators hand big blocks back to the kernel when they are freed (glibc maps
blocks over 32 MiB afresh, and trims the top of its heap), so every result
would pay for faulting its pages in again: in a loop that halved all_sum's
speed at 64 MiB on the ring, and made the MPI backend's all_sum six times
slower than raw mpi4py from 256 KiB to 1 MiB. Results of at least MIN_BYTES
are views of pooled blocks instead. A block goes back to the pool when the last
array that sees it is gone: NumPy makes every view of a result keep the
result itself alive (its base is not an ndarray), so a finalizer on the
result fires only then.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

__all__ = ["empty", "MIN_BYTES", "MAX_KEPT_BYTES"]

MIN_BYTES = 64 << 10
MAX_KEPT_BYTES = 1 << 30

# Re-entrant: a garbage collection inside empty() may release a block on the same thread.
_lock = threading.RLock()
_free: dict[int, list[np.ndarray]] = {}
_kept = 0
# The block behind each live result, with the weak reference to the result that gives it back,
# keyed by that reference's id (a reference hashes like its array, and arrays do not hash).
_lent: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _returned(ref: weakref.ref) -> None:
    entry = _lent.pop(id(ref), None)
    if entry is not None:
        _release(entry[1])


def _release(block: np.ndarray) -> None:
    global _kept
    with _lock:
        if _kept + block.nbytes > MAX_KEPT_BYTES:
            return  # let it go back to the system
        _free.setdefault(block.nbytes, []).append(block)
        _kept += block.nbytes


def empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Return an uninitialised C-contiguous array, from the pool when it is large."""
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    global _kept
    with _lock:
        blocks = _free.get(nbytes)
        block = blocks.pop() if blocks else None
        if block is not None:
            _kept -= nbytes
    if block is None:
        block = np.empty(nbytes, dtype=np.uint8)
    # Views collapse their base to `flat` (its own base is a memoryview), so `flat`
    # lives exactly as long as any array that sees the block.
    flat = np.frombuffer(block.data, dtype=dtype)
    ref = weakref.ref(flat, _returned)  # a fraction of weakref.finalize's cost
    _lent[id(ref)] = (ref, block)
    return flat.reshape(shape)
