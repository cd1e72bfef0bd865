"""The collective operations: check arguments, adapt arrays, call the group's backend.

Every function returns a new array in the caller's array type and leaves its
input untouched. `stream=` is accepted and ignored, as a program written for
MLX passes it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from . import _pool
from .arrays import adapt, check_dtype
from .backends.base import Backend, ReduceOp
from .group import Group, world

__all__ = [
    "all_gather",
    "all_max",
    "all_min",
    "all_sum",
    "barrier",
    "broadcast",
    "recv",
    "recv_like",
    "send",
    "sum_scatter",
]

# The caller's array type: NumPy in, NumPy out; a torch tensor in, a tensor out.
ArrayT = TypeVar("ArrayT")


def _backend(group: Group | None) -> Backend:
    return (group if group is not None else world())._backend


def _check_rank(op: str, name: str, r: int, b: Backend, *, peer: bool) -> int:
    r = int(r)
    if not 0 <= r < b.size:
        raise ValueError(f"{op}: {name} must be in [0, {b.size}), got {r}")
    if peer and r == b.rank:
        raise ValueError(f"{op}: {name} {r} is this rank; send and recv need another rank")
    return r


def _reduce(op: str, rop: ReduceOp, x: ArrayT, group: Group | None) -> ArrayT:
    ad = adapt(x)
    a = ad.array
    check_dtype(a.dtype, op)
    src = a if a.flags.c_contiguous else np.asarray(a, order="C")
    out = _pool.empty(src.shape, src.dtype)
    _backend(group).all_reduce_into(src, out, rop)
    return ad.wrap(out)


def all_sum(x: ArrayT, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return the elementwise sum of `x` over all ranks (logical or for bool)."""
    return _reduce("all_sum", ReduceOp.SUM, x, group)


def all_max(x: ArrayT, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return the elementwise maximum of `x` over all ranks."""
    return _reduce("all_max", ReduceOp.MAX, x, group)


def all_min(x: ArrayT, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return the elementwise minimum of `x` over all ranks."""
    return _reduce("all_min", ReduceOp.MIN, x, group)


def all_gather(x: ArrayT, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return every rank's `x` concatenated along axis 0 (a 0-d `x` counts as shape (1,))."""
    ad = adapt(x)
    check_dtype(ad.array.dtype, "all_gather")
    b = _backend(group)
    src = np.ascontiguousarray(ad.array.reshape(1) if ad.array.ndim == 0 else ad.array)
    out = _pool.empty((b.size * src.shape[0],) + src.shape[1:], src.dtype)
    b.all_gather(src, out)
    return ad.wrap(out)


def sum_scatter(x: ArrayT, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return rows [r*n/size, (r+1)*n/size) of the sum of `x` over ranks, on rank r."""
    ad = adapt(x)
    check_dtype(ad.array.dtype, "sum_scatter")
    b = _backend(group)
    a = ad.array
    if a.ndim == 0 or a.shape[0] % b.size:
        got = "a 0-d array" if a.ndim == 0 else f"{a.shape[0]} rows"
        raise ValueError(
            f"sum_scatter: axis 0 must divide evenly among {b.size} ranks, got {got}; "
            "pad the array to a multiple of the group size"
        )
    src = np.asarray(a, order="C")
    out = np.empty((a.shape[0] // b.size,) + a.shape[1:], dtype=a.dtype)
    b.reduce_scatter(src, out, ReduceOp.SUM)
    return ad.wrap(out)


def send(x: ArrayT, dst: int, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Send `x` to rank `dst` of the group (any rank but this one) and return `x`."""
    ad = adapt(x)
    check_dtype(ad.array.dtype, "send")
    b = _backend(group)
    b.send(np.asarray(ad.array, order="C"), _check_rank("send", "dst", dst, b, peer=True))
    return x


def recv(shape: Any, dtype: Any, src: int, *, group: Group | None = None,
         stream: object = None) -> np.ndarray:
    """Return an array of `shape` and `dtype` that rank `src` sent with `send`."""
    dt = np.dtype(dtype)
    check_dtype(dt, "recv")
    b = _backend(group)
    src = _check_rank("recv", "src", src, b, peer=True)
    dims = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    out = np.empty(dims, dtype=dt)
    b.recv(out, src)
    return out


def recv_like(x: ArrayT, src: int, *, group: Group | None = None, stream: object = None) -> ArrayT:
    """Return an array like `x` (shape, dtype, array type) that rank `src` sent with `send`."""
    ad = adapt(x)
    check_dtype(ad.array.dtype, "recv_like")
    b = _backend(group)
    src = _check_rank("recv_like", "src", src, b, peer=True)
    out = np.empty(ad.array.shape, dtype=ad.array.dtype)
    b.recv(out, src)
    return ad.wrap(out)


def broadcast(x: ArrayT, root: int = 0, *, group: Group | None = None,
              stream: object = None) -> ArrayT:
    """Return root's `x` on every rank."""
    ad = adapt(x)
    check_dtype(ad.array.dtype, "broadcast")
    b = _backend(group)
    root = _check_rank("broadcast", "root", root, b, peer=False)
    buf = np.array(ad.array, order="C", copy=True)
    b.broadcast(buf, root)
    return ad.wrap(buf)


def barrier(*, group: Group | None = None, stream: object = None) -> None:
    """Return once every rank of the group has called `barrier`."""
    _backend(group).barrier()
