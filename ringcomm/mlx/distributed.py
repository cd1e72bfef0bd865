"""A drop-in for `mlx.core.distributed` on ringcomm: the same functions, the same signatures.

    import ringcomm.mlx.distributed as dist       # instead of mx.distributed
    world = dist.init()
    y = dist.all_sum(mx.ones(4))

or route `mx.distributed` itself for the whole program (MLX's distributed layers, mlx-lm):
`ringcomm.mlx.install()`. Every collective is differentiable with MLX's own rules
(`ringcomm.mlx.autodiff`) and refused, with a clear error, inside mx.compile and mx.vmap.

Differences from MLX's: a collective runs when it is called (MLX's are lazy and run when
the graph is evaluated), so its result is evaluated already; `stream` is accepted and
ignored; the groups are ringcomm's (`ringcomm.Group`, also accepted by ringcomm's calls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from .. import group as _groups
from .. import ops as _ops
from ..arrays import bfloat16 as _np_bfloat16
from ..errors import InitError
from ..group import Group
from . import autodiff

__all__ = ["Group", "all_gather", "all_max", "all_min", "all_sum", "init", "is_available",
           "recv", "recv_like", "send", "sum_scatter"]

# MLX's backend names; ringcomm carries "ring" and "mpi" (and "any", its own choice).
_MLX_BACKENDS = ("any", "ring", "mpi", "nccl", "jaccl")
_CARRIED = ("any", "ring", "mpi")


def is_available(backend: str = "any") -> bool:
    """Check if a communication backend is available (as `mx.distributed.is_available`)."""
    if backend not in _CARRIED:
        return False
    return _groups.is_available(backend)


def init(strict: bool = False, backend: str = "any", *,
         all_gather_factory: Callable[[int, int], Callable[[bytes, int], bytes]] | None = None,
         ) -> Group:
    """Initialize the communication backend and return the global group, on ringcomm.

    As `mx.distributed.init`: with `strict=False` a process that no launcher started gets a
    group of one; `backend` is "any", "ring" or "mpi" ("nccl" and "jaccl" are MLX's
    GPU/RDMA backends, which ringcomm does not carry: refused with strict=True, a group of
    one otherwise, as MLX does for a backend it cannot use).
    """
    if all_gather_factory is not None:
        if not callable(all_gather_factory):
            raise TypeError("init: all_gather_factory must be callable, got "
                            f"{type(all_gather_factory).__name__}")
        if backend != "jaccl":
            raise ValueError("init: all_gather_factory is only used with backend='jaccl', "
                             f"got backend={backend!r}")
    if backend not in _MLX_BACKENDS:
        raise ValueError(f"init: unknown backend {backend!r}; expected one of "
                         f"{', '.join(map(repr, _MLX_BACKENDS))}")
    if backend not in _CARRIED:
        if strict:
            raise InitError(f"init(backend={backend!r}): ringcomm carries the 'ring' and 'mpi' "
                            "backends, not MLX's GPU/RDMA ones; use backend='any'")
        return _single()
    return _groups.init(strict=strict, backend=backend)  # type: ignore[arg-type]


_one: Group | None = None


def _single() -> Group:
    global _one
    if _one is None:
        from ..backends.single import SingleBackend

        _one = Group(SingleBackend(), "single")
    return _one


def _array(x: Any, op: str) -> Any:
    if isinstance(x, mx.array):
        return x
    try:
        return mx.array(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{op}: expecting an mlx array, got {type(x).__name__}") from e


def _check_group(group: Any, op: str) -> Group | None:
    if group is None or isinstance(group, Group):
        return group
    raise TypeError(
        f"{op}: group must be a group of ringcomm.mlx.distributed.init() (or None), got "
        f"{type(group).__module__}.{type(group).__name__}; a group made by MLX's own "
        "mx.distributed.init() before ringcomm.mlx.install() does not travel on ringcomm: "
        "call install() first")


def _call(op: str, x: Any, group: Any, args: tuple[Any, ...] = ()) -> Any:
    g = _check_group(group, op)
    return autodiff.run(op, _array(x, op), args, {"group": g} if g is not None else {})


def all_sum(x: Any, *, group: Group | None = None, stream: object = None) -> Any:
    """All reduce sum: the sum of the `x` arrays of every process in the group."""
    return _call("all_sum", x, group)


def all_max(x: Any, *, group: Group | None = None, stream: object = None) -> Any:
    """All reduce max: the elementwise maximum of the `x` arrays of the group."""
    return _call("all_max", x, group)


def all_min(x: Any, *, group: Group | None = None, stream: object = None) -> Any:
    """All reduce min: the elementwise minimum of the `x` arrays of the group."""
    return _call("all_min", x, group)


def all_gather(x: Any, *, group: Group | None = None, stream: object = None) -> Any:
    """Gather the `x` arrays of the group, concatenated along the first axis."""
    return _call("all_gather", x, group)


def sum_scatter(x: Any, *, group: Group | None = None, stream: object = None) -> Any:
    """Sum `x` across the group and return this rank's rows of the sum (axis 0 split evenly)."""
    return _call("sum_scatter", x, group)


def send(x: Any, dst: int, *, group: Group | None = None, stream: object = None) -> Any:
    """Send `x` to rank `dst` of the group; returns `x` (the send has happened)."""
    return _call("send", x, group, (dst,))


def recv_like(x: Any, src: int, *, group: Group | None = None, stream: object = None) -> Any:
    """Receive an array with the shape and dtype of `x` from rank `src`."""
    return _call("recv_like", x, group, (src,))


def recv(shape: Sequence[int], dtype: Any, src: int, *, group: Group | None = None,
         stream: object = None) -> Any:
    """Receive an array of `shape` and (MLX) `dtype` from rank `src` of the group."""
    g = _check_group(group, "recv")
    np_dtype = _numpy_dtype(dtype)
    dims = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if dtype == mx.bfloat16:
        bits = _ops.recv(dims, np.uint16, src, group=g)
        return mx.array(bits).view(mx.bfloat16)
    return mx.array(_ops.recv(dims, np_dtype, src, group=g), dtype=dtype)


def _numpy_dtype(dtype: Any) -> np.dtype:
    if dtype == mx.bfloat16:
        if _np_bfloat16 is None:
            raise TypeError("recv: bfloat16 needs ml_dtypes; pip install ml_dtypes")
        return _np_bfloat16
    if not isinstance(dtype, mx.Dtype):
        return np.dtype(dtype)
    name = str(dtype).rpartition(".")[2]  # "mlx.core.float32"
    try:
        return np.dtype(name)
    except TypeError as e:
        raise TypeError(f"recv: no NumPy dtype for {dtype}") from e
