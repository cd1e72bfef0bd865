"""Where an array of a framework with autodiff or tracing goes before ringcomm's plain path.

A collective on a torch tensor that requires grad, on an MLX array inside `mx.grad`, or on a
JAX tracer inside `jax.jit` cannot take the plain path (NumPy in, NumPy out) without cutting
the framework's graph, and a cut graph gives zero or missing gradients without a word. So
every op of `ringcomm.ops`, given anything but a NumPy array, first asks `hook(x)` for the
framework's module (`ringcomm.torch.autograd`, `ringcomm.mlx.autodiff`,
`ringcomm.jax.collectives`) and calls its `dispatch(op, x, args, kwargs)`. The module either
handles the call (a differentiable or traceable collective), raises a clear error (a transform
it cannot honour), or returns NotImplemented: nothing to differentiate, take the plain path.

The framework's module calls back into ringcomm's plain ops through `plain(op)`, which skips
the hook for that call (on its thread), so a module never sees its own calls again.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from .signature import ReduceOp

__all__ = ["Fixed", "fix", "hook", "plain", "reduction", "register"]

# The module of each framework, by the top-level package of its array types.
_MODULES = {
    "torch": "ringcomm.torch.autograd",
    "mlx": "ringcomm.mlx.autodiff",
    "jax": "ringcomm.jax.collectives",
    "jaxlib": "ringcomm.jax.collectives",
}
_loaded: dict[str, ModuleType | None] = {}
_off = threading.local()  # set while a framework's module makes a plain call
_ops: dict[str, Callable[..., Any]] = {}  # ringcomm's ops by name (`register`)
_plains: dict[str, Callable[..., Any]] = {}  # `plain`'s functions, made once


def hook(x: object) -> ModuleType | None:
    """Return the framework module that must see a call on `x` first, or None."""
    if getattr(_off, "on", False):
        return None
    top = type(x).__module__.partition(".")[0]
    try:
        return _loaded[top]
    except KeyError:
        pass
    name = _MODULES.get(top)
    module: ModuleType | None = None
    if name is not None:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only the framework itself may be missing (an array of it exists, so that is
            # unusual); a ringcomm module that fails to import is a bug, and raising beats a
            # silent plain path that cuts gradients.
            if e.name is None or not name.startswith(e.name) and e.name.split(".")[0] != top:
                raise
    _loaded[top] = module
    return module


def register(*fns: Callable[..., Any]) -> None:
    """Record ringcomm's ops by name for `plain` (ops.py and uneven.py register theirs)."""
    for fn in fns:
        _ops[fn.__name__] = fn


def plain(op: str) -> Callable[..., Any]:
    """Return ringcomm's op named `op` without the hook: a framework's module's own calls."""
    made = _plains.get(op)
    if made is None:
        made = _plains[op] = _without_hook(op, _ops[op])
    return made


def _without_hook(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        before = getattr(_off, "on", False)
        _off.on = True
        try:
            return fn(*args, **kwargs)
        finally:
            _off.on = before
    call.__name__ = op
    return call


class Fixed(NamedTuple):
    """One call with every argument fixed, as ringcomm's ops would read them: what a
    framework's module differentiates or traces (each wraps it in its own call type)."""

    op: str  # the ops function
    args: tuple[Any, ...]  # its positional arguments after x, normalised
    group: Any  # the Group, or None for the world
    rank: int
    size: int
    reduction: ReduceOp | None = None  # all_reduce, reduce_scatter(_v), all_max, all_min


# counts(name, value, send): a call's counts ("counts", "send_counts", "recv_counts") as a
# tuple; `value` None where the caller gave none; `send` this rank's send counts (recv_counts).
Counts = Callable[[str, Any, tuple[int, ...]], tuple[int, ...]]


def fix(op: str, args: tuple[Any, ...], kwargs: dict[str, Any], counts: Counts,
        no_async: str) -> Fixed:
    """Fix every argument of ringcomm.<op>(x, *args, **kwargs); `no_async` is the error of
    async_op=True (a Work carries no graph)."""
    from .group import world

    kw = dict(kwargs)
    kw.pop("stream", None)
    if kw.pop("async_op", False):
        raise ValueError(f"ringcomm.{op}: async_op=True {no_async}")
    group = kw.pop("group", None)
    g = group if group is not None else world()
    rank, size = g.rank(), g.size()

    def take(i: int, name: str, default: Any) -> Any:
        return args[i] if i < len(args) else kw.pop(name, default)

    def peer(name: str, default: Any) -> int:
        r = int(take(0, name, default))
        if not 0 <= r < size:
            raise ValueError(f"ringcomm.{op}: {name} must be in [0, {size}), got {r}")
        return r

    fixed_args: tuple[Any, ...] = ()
    red: ReduceOp | None = None
    if op in ("all_sum", "all_max", "all_min"):
        red = ReduceOp(op[4:])
    elif op in ("all_reduce", "reduce_scatter"):
        red = reduction(take(0, "op", "sum"))
        fixed_args = (red.value,)
    elif op in ("broadcast", "gather", "scatter"):
        fixed_args = (peer("root", 0),)
    elif op in ("send", "recv_like"):
        fixed_args = (peer("dst" if op == "send" else "src", None),)
    elif op == "all_gather_v":
        fixed_args = (counts("counts", take(0, "counts", None), ()),)
    elif op == "reduce_scatter_v":
        c = counts("counts", take(0, "counts", None), ())
        red = reduction(take(1, "op", "sum"))
        fixed_args = (c, red.value)
    elif op == "all_to_all_v":
        send = counts("send_counts", take(0, "send_counts", None), ())
        fixed_args = (send, counts("recv_counts", take(1, "recv_counts", None), send))
    elif op not in ("all_gather", "sum_scatter", "all_to_all"):
        raise ValueError(f"ringcomm.{op}: no rule to differentiate or trace it")
    if kw:
        raise TypeError(f"ringcomm.{op}: unexpected keyword arguments {sorted(kw)!r}")
    return Fixed(op, fixed_args, group, rank, size, red)


def reduction(op: Any) -> ReduceOp:
    """Return the ReduceOp `op` names (a ReduceOp, an enum with its value, or the value)."""
    try:
        return op if isinstance(op, ReduceOp) else ReduceOp(getattr(op, "value", op))
    except ValueError:
        names = ", ".join(repr(r.value) for r in ReduceOp)
        raise ValueError(f"unknown reduce op {op!r}; expected a ringcomm.ReduceOp or one of "
                         f"{names}") from None
