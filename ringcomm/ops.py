"""The collective operations: check arguments, adapt arrays, call the group's backend.

Every function returns a new array in the caller's array type and leaves its
input untouched. `stream=` is accepted and ignored, as a program written for
MLX passes it. With ``async_op=True`` every function returns a `Work` at once
(a Future of what it would return); the caller must not modify an input until
that Work is done (RINGCOMM_DEBUG=1 checks it). The blocking call is the same
backend call, run in the group's call order (`group.Calls`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast, overload

import numpy as np

from . import _pool, environment
from . import group as _groups
from .arrays import adapt, check_dtype
from .backends.base import Backend
from .errors import RingcommError
from .frameworks import hook, register
from .group import Group, Work, world
from .signature import ReduceOp

__all__ = [
    "all_reduce",
    "all_gather",
    "all_to_all",
    "all_max",
    "all_min",
    "all_sum",
    "barrier",
    "broadcast",
    "gather",
    "recv",
    "recv_like",
    "scatter",
    "send",
    "reduce_scatter",
    "sum_scatter",
]

# The caller's array type: NumPy in, NumPy out; a torch tensor in, a tensor out.
ArrayT = TypeVar("ArrayT")


def _group(group: Group | None) -> Group:
    return group if group is not None else world()


def _backend(group: Group | None) -> Backend:
    return _group(group)._backend


def _check_rank(op: str, name: str, r: int, b: Backend, *, peer: bool) -> int:
    r = int(r)
    if not 0 <= r < b.size:
        raise ValueError(f"{op}: {name} must be in [0, {b.size}), got {r}")
    if peer and r == b.rank:
        raise ValueError(f"{op}: {name} {r} is this rank; send and recv need another rank")
    return r


def _call(g: Group, op: str, fn: Callable[[], Any], async_op: bool,
          inputs: tuple[np.ndarray, ...] = (), lane: object = None) -> Any:
    """Run the backend call `fn` in the group's call order, now or (async_op) as a Work.

    With RINGCOMM_DEBUG set, an asynchronous call also checks that the caller left its
    inputs alone until the call was done.
    """
    calls = g._calls
    if not async_op and calls.pending == 0:
        return fn()  # Calls.run's own fast path, without the call: the latency path
    if async_op and inputs and environment.debug(os.environ):
        fn = _guarded(op, fn, inputs)
    return calls.run(fn, async_op, lane)


def _guarded(op: str, fn: Callable[[], Any], inputs: tuple[np.ndarray, ...]) -> Callable[[], Any]:
    copies = [a.copy() for a in inputs]

    def run() -> Any:
        result = fn()
        for a, before in zip(inputs, copies):
            if not np.array_equal(a, before, equal_nan=a.dtype.kind in "fc"):
                raise RingcommError(
                    f"{op}: its input was modified while the call was in flight "
                    "(async_op=True); leave an input alone until its Work is done, or pass a copy")
        return result
    return run


_ndarray = np.ndarray
_SUM, _MAX, _MIN, _AVG = ReduceOp.SUM, ReduceOp.MAX, ReduceOp.MIN, ReduceOp.AVG


def _fw(name: str, x: Any, args: tuple, group: Group | None, stream: object, async_op: bool,
        **more: Any) -> Any:
    """Hand a call on a framework's array to that framework's module first (`frameworks`):
    its result, or NotImplemented for the plain path."""
    module = hook(x)
    if module is None:
        return NotImplemented
    kwargs = {"group": group, "stream": stream, "async_op": async_op, **more}
    return module.dispatch(name, x, args, kwargs)


def reduce_op(op: ReduceOp | str) -> ReduceOp:
    """Return the ReduceOp named by `op` (a ReduceOp or its value, "sum")."""
    if isinstance(op, ReduceOp):
        return op
    try:
        return ReduceOp(str(op).lower())
    except ValueError:
        names = ", ".join(repr(o.value) for o in ReduceOp)
        raise ValueError(f"unknown reduce op {op!r}; use one of {names}") from None


def _reduce(op: str, rop: ReduceOp, x: ArrayT, group: Group | None, async_op: bool,
            stream: object = None) -> Any:
    if type(x) is not _ndarray:
        more = {"op": rop} if op == "all_reduce" else {}
        if (r := _fw(op, x, (), group, stream, async_op, **more)) is not NotImplemented:
            return r
    elif not async_op:
        # The latency path: a NumPy array, a group with no call in flight, a backend that has
        # a fast path for it (it returns None where it has not).
        g = _groups._world if group is None else group
        if g is not None and g._calls.pending == 0:
            y = g._backend.reduce_small(x, rop)  # type: ignore[arg-type]
            if y is not None:
                if rop is _AVG:
                    np.divide(y, g._backend.size, out=y)
                return y
    ad = adapt(x)
    a = ad.array
    check_dtype(a.dtype, op, rop)
    src = a if a.flags.c_contiguous else np.asarray(a, order="C")
    g = _group(group)
    b = g._backend
    if not async_op and g._calls.pending == 0 and type(x) is not _ndarray:
        # Another library's array, as NumPy: the latency path too.
        y = b.reduce_small(src, rop)
        if y is not None:
            if rop is _AVG:
                np.divide(y, b.size, out=y)
            return ad.wrap(y)
    out = _pool.empty(src.shape, src.dtype)

    def run() -> ArrayT:
        b.all_reduce_into(src, out, rop)
        if rop is _AVG:
            np.divide(out, b.size, out=out)
        return ad.wrap(out)
    return _call(g, op, run, async_op, (src,))


@overload
def all_sum(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def all_sum(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[True]) -> Work: ...
def all_sum(x: ArrayT, *, group: Group | None = None, stream: object = None,
            async_op: bool = False) -> ArrayT | Work:
    """Return the elementwise sum of `x` over all ranks (logical or for bool)."""
    return _reduce("all_sum", _SUM, x, group, async_op, stream)


@overload
def all_max(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def all_max(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[True]) -> Work: ...
def all_max(x: ArrayT, *, group: Group | None = None, stream: object = None,
            async_op: bool = False) -> ArrayT | Work:
    """Return the elementwise maximum of `x` over all ranks."""
    return _reduce("all_max", _MAX, x, group, async_op, stream)


@overload
def all_min(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def all_min(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[True]) -> Work: ...
def all_min(x: ArrayT, *, group: Group | None = None, stream: object = None,
            async_op: bool = False) -> ArrayT | Work:
    """Return the elementwise minimum of `x` over all ranks."""
    return _reduce("all_min", _MIN, x, group, async_op, stream)


@overload
def all_gather(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
               async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def all_gather(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
               async_op: Literal[True]) -> Work: ...
def all_gather(x: ArrayT, *, group: Group | None = None, stream: object = None,
               async_op: bool = False) -> ArrayT | Work:
    """Return every rank's `x` concatenated along axis 0 (a 0-d `x` counts as shape (1,))."""
    if type(x) is not _ndarray:
        if (r := _fw("all_gather", x, (), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "all_gather")
    g = _group(group)
    b = g._backend
    src = np.ascontiguousarray(ad.array.reshape(1) if ad.array.ndim == 0 else ad.array)
    out = _pool.empty((b.size * src.shape[0],) + src.shape[1:], src.dtype)

    def run() -> ArrayT:
        b.all_gather(src, out)
        return ad.wrap(out)
    return _call(g, "all_gather", run, async_op, (src,))


@overload
def sum_scatter(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
                async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def sum_scatter(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
                async_op: Literal[True]) -> Work: ...
def sum_scatter(x: ArrayT, *, group: Group | None = None, stream: object = None,
                async_op: bool = False) -> ArrayT | Work:
    """Return rows [r*n/size, (r+1)*n/size) of the sum of `x` over ranks, on rank r."""
    return _scatter("sum_scatter", x, _SUM, group, stream, async_op)


def reduce_scatter(x: ArrayT, op: ReduceOp | str = "sum", *, group: Group | None = None,
                   stream: object = None, async_op: bool = False) -> ArrayT | Work:
    """Return rows [r*n/size, (r+1)*n/size) of the reduction of `x` by `op` over ranks, on
    rank r (`sum_scatter` with any ReduceOp)."""
    return _scatter("reduce_scatter", x, reduce_op(op), group, stream, async_op)


def _scatter(op: str, x: Any, rop: ReduceOp, group: Group | None, stream: object,
             async_op: bool) -> Any:
    if type(x) is not _ndarray:
        more = {"op": rop} if op == "reduce_scatter" else {}
        if (r := _fw(op, x, (), group, stream, async_op, **more)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, op, rop)
    g = _group(group)
    b = g._backend
    a = ad.array
    _blocks(op, a, b.size)
    src = np.asarray(a, order="C")
    out = np.empty((a.shape[0] // b.size,) + a.shape[1:], dtype=a.dtype)

    def run() -> Any:
        b.reduce_scatter(src, out, rop)
        if rop is _AVG:
            np.divide(out, b.size, out=out)
        return ad.wrap(out)
    return _call(g, op, run, async_op, (src,))


def all_reduce(x: ArrayT, op: ReduceOp | str = "sum", *, group: Group | None = None,
               stream: object = None, async_op: bool = False) -> ArrayT | Work:
    """Return the elementwise reduction of `x` over all ranks by `op`: a ReduceOp or its
    name ("sum", "avg", "prod", "max", "min", "band", "bor", "bxor")."""
    return _reduce("all_reduce", reduce_op(op), x, group, async_op, stream)


@overload
def send(x: ArrayT, dst: int, *, group: Group | None = ..., stream: object = ...,
         async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def send(x: ArrayT, dst: int, *, group: Group | None = ..., stream: object = ...,
         async_op: Literal[True]) -> Work: ...
def send(x: ArrayT, dst: int, *, group: Group | None = None, stream: object = None,
         async_op: bool = False) -> ArrayT | Work:
    """Send `x` to rank `dst` of the group (any rank but this one) and return `x`."""
    if type(x) is not _ndarray:
        if (r := _fw("send", x, (dst,), group, stream, async_op)) is not NotImplemented:
            return r
    if type(x) is _ndarray and not async_op:
        # The latency path (as _reduce's): the backend returns False where it has none.
        g = _groups._world if group is None else group
        if g is not None and g._calls.pending == 0 and g._backend.send_small(
                x, dst):  # type: ignore[arg-type]
            return x
    ad = adapt(x)
    check_dtype(ad.array.dtype, "send")
    g = _group(group)
    b = g._backend
    dst = _check_rank("send", "dst", dst, b, peer=True)
    src = np.asarray(ad.array, order="C")

    def run() -> ArrayT:
        b.send(src, dst)
        return x
    return _call(g, "send", run, async_op, (src,), ("send", dst) if b.concurrent_p2p else None)


@overload
def recv(shape: Any, dtype: Any, src: int, *, group: Group | None = ..., stream: object = ...,
         async_op: Literal[False] = ...) -> np.ndarray: ...
@overload
def recv(shape: Any, dtype: Any, src: int, *, group: Group | None = ..., stream: object = ...,
         async_op: Literal[True]) -> Work: ...
def recv(shape: Any, dtype: Any, src: int, *, group: Group | None = None,
         stream: object = None, async_op: bool = False) -> np.ndarray | Work:
    """Return an array of `shape` and `dtype` that rank `src` sent with `send`."""
    if not async_op and type(shape) in (tuple, int):
        g = _groups._world if group is None else group
        if g is not None and g._calls.pending == 0:
            y = g._backend.recv_small(("in", src, dtype, shape), shape, dtype, src)
            if y is not None:
                return y
    dt = np.dtype(dtype)
    check_dtype(dt, "recv")
    g = _group(group)
    b = g._backend
    src = _check_rank("recv", "src", src, b, peer=True)
    dims = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    out = np.empty(dims, dtype=dt)

    def run() -> np.ndarray:
        b.recv(out, src)
        return out
    return _call(g, "recv", run, async_op, (), ("recv", src) if b.concurrent_p2p else None)


@overload
def recv_like(x: ArrayT, src: int, *, group: Group | None = ..., stream: object = ...,
              async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def recv_like(x: ArrayT, src: int, *, group: Group | None = ..., stream: object = ...,
              async_op: Literal[True]) -> Work: ...
def recv_like(x: ArrayT, src: int, *, group: Group | None = None, stream: object = None,
              async_op: bool = False) -> ArrayT | Work:
    """Return an array like `x` (shape, dtype, array type) that rank `src` sent with `send`."""
    if type(x) is not _ndarray:
        if (r := _fw("recv_like", x, (src,), group, stream, async_op)) is not NotImplemented:
            return r
    if type(x) is _ndarray and not async_op:
        g = _groups._world if group is None else group
        if g is not None and g._calls.pending == 0:
            a = cast(np.ndarray, x)
            y = g._backend.recv_small(("in", src, a.dtype, a.shape), a.shape, a.dtype, src,
                                      "recv_like")
            if y is not None:
                return cast(ArrayT, y)
    ad = adapt(x)
    check_dtype(ad.array.dtype, "recv_like")
    g = _group(group)
    b = g._backend
    src = _check_rank("recv_like", "src", src, b, peer=True)
    out = np.empty(ad.array.shape, dtype=ad.array.dtype)

    def run() -> ArrayT:
        b.recv(out, src)
        return ad.wrap(out)
    return _call(g, "recv_like", run, async_op, (), ("recv", src) if b.concurrent_p2p else None)


@overload
def broadcast(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
              async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def broadcast(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
              async_op: Literal[True]) -> Work: ...
def broadcast(x: ArrayT, root: int = 0, *, group: Group | None = None,
              stream: object = None, async_op: bool = False) -> ArrayT | Work:
    """Return root's `x` on every rank."""
    if type(x) is not _ndarray:
        if (r := _fw("broadcast", x, (root,), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "broadcast")
    g = _group(group)
    b = g._backend
    root = _check_rank("broadcast", "root", root, b, peer=False)
    buf = np.array(ad.array, order="C", copy=True)

    def run() -> ArrayT:
        b.broadcast(buf, root)
        return ad.wrap(buf)
    return _call(g, "broadcast", run, async_op)


@overload
def barrier(*, group: Group | None = ..., stream: object = ...,
            async_op: Literal[False] = ...) -> None: ...
@overload
def barrier(*, group: Group | None = ..., stream: object = ...,
            async_op: Literal[True]) -> Work: ...
def barrier(*, group: Group | None = None, stream: object = None,
            async_op: bool = False) -> Work | None:
    """Return once every rank of the group has called `barrier`."""
    g = _group(group)
    return _call(g, "barrier", g._backend.barrier, async_op)


def _blocks(op: str, a: np.ndarray, size: int) -> None:
    if a.ndim == 0 or a.shape[0] % size:
        got = "a 0-d array" if a.ndim == 0 else f"{a.shape[0]} rows"
        raise ValueError(f"{op}: axis 0 must divide evenly among {size} ranks, got {got}; "
                         "pad the array to a multiple of the group size")


@overload
def all_to_all(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
               async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def all_to_all(x: ArrayT, *, group: Group | None = ..., stream: object = ...,
               async_op: Literal[True]) -> Work: ...
def all_to_all(x: ArrayT, *, group: Group | None = None, stream: object = None,
               async_op: bool = False) -> ArrayT | Work:
    """Split axis 0 of `x` into `size` blocks and send block j to rank j.

    Returns an array of `x`'s shape whose block i is what rank i sent to this rank.
    """
    if type(x) is not _ndarray:
        if (r := _fw("all_to_all", x, (), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "all_to_all")
    g = _group(group)
    b = g._backend
    _blocks("all_to_all", ad.array, b.size)
    src = np.ascontiguousarray(ad.array)
    out = _pool.empty(src.shape, src.dtype)

    def run() -> ArrayT:
        b.all_to_all(src, out)
        return ad.wrap(out)
    return _call(g, "all_to_all", run, async_op, (src,))


@overload
def gather(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
           async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def gather(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
           async_op: Literal[True]) -> Work: ...
def gather(x: ArrayT, root: int = 0, *, group: Group | None = None, stream: object = None,
           async_op: bool = False) -> ArrayT | Work:
    """Return every rank's `x` concatenated along axis 0 on `root`; elsewhere an empty array.

    The empty array has shape (0, *x.shape[1:]) and `x`'s dtype; a 0-d `x` counts as shape (1,).
    """
    if type(x) is not _ndarray:
        if (r := _fw("gather", x, (root,), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "gather")
    g = _group(group)
    b = g._backend
    root = _check_rank("gather", "root", root, b, peer=False)
    src = np.ascontiguousarray(ad.array.reshape(1) if ad.array.ndim == 0 else ad.array)
    rows = b.size * src.shape[0] if b.rank == root else 0
    out = _pool.empty((rows,) + src.shape[1:], src.dtype)

    def run() -> ArrayT:
        b.gather(src, out if b.rank == root else None, root)
        return ad.wrap(out)
    return _call(g, "gather", run, async_op, (src,))


@overload
def scatter(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[False] = ...) -> ArrayT: ...
@overload
def scatter(x: ArrayT, root: int = ..., *, group: Group | None = ..., stream: object = ...,
            async_op: Literal[True]) -> Work: ...
def scatter(x: ArrayT, root: int = 0, *, group: Group | None = None, stream: object = None,
            async_op: bool = False) -> ArrayT | Work:
    """Split root's `x` along axis 0 into `size` blocks; return block r on rank r.

    Every rank passes an array of root's shape and dtype (only root's values are sent;
    the others' are checked like any call's).
    """
    if type(x) is not _ndarray:
        if (r := _fw("scatter", x, (root,), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "scatter")
    g = _group(group)
    b = g._backend
    root = _check_rank("scatter", "root", root, b, peer=False)
    _blocks("scatter", ad.array, b.size)
    src = np.ascontiguousarray(ad.array)
    out = np.empty((src.shape[0] // b.size,) + src.shape[1:], dtype=src.dtype)

    def run() -> ArrayT:
        b.scatter(src, out, root)
        return ad.wrap(out)
    return _call(g, "scatter", run, async_op, (src,))


register(all_sum, all_max, all_min, all_reduce, all_gather, sum_scatter, reduce_scatter, send,
         recv, recv_like, broadcast, barrier, all_to_all, gather, scatter)
