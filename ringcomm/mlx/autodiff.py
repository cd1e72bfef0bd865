"""ringcomm's collectives inside MLX's transforms: the MLX module of the frameworks hook.

A collective is a host call: it evaluates its input, sends the bytes and wraps what came back in
a new array. Inside `mx.grad` (`mx.value_and_grad`, `mx.vjp`, `mx.jvp`, `mx.checkpoint`,
`nn.value_and_grad`) that new array would have no tie to the input, and the gradient would be
zero without a word. So a call on an array that MLX is tracing becomes an `mx.custom_function`
whose forward is the host call and whose vjp/jvp are MLX's own rules for its own collectives
(mlx/distributed/primitives.cpp):

=================  ===========================================  ===========================
collective         vjp (reverse mode)                           jvp (forward mode)
=================  ===========================================  ===========================
all_sum            the cotangent, as it is                      all_sum of the tangent
all_max, all_min   the cotangent, as it is (MLX's rule)         all_max/all_min of it
all_reduce         sum as all_sum; avg: cotangent / size;       the same all_reduce
                   max/min as MLX's; prod, band, bor, bxor:
                   no rule (raises when differentiated)
all_gather         this rank's rows of the cotangent            all_gather of the tangent
all_gather_v       this rank's rows (its offset from counts)    all_gather_v of the tangent
sum_scatter        all_gather of the cotangent                  sum_scatter of the tangent
reduce_scatter(_v) sum as sum_scatter (all_gather_v); avg / size  the same reduce_scatter
broadcast          the cotangent on root, zeros elsewhere       broadcast of the tangent
all_to_all(_v)     all_to_all of the cotangent (counts swapped) all_to_all of the tangent
send               returns its input, as ringcomm.send does: the identity
recv_like          its result does not depend on x's values: a zero gradient, exactly
gather, scatter    no rule: raises when a gradient flows through them
=================  ===========================================  ===========================

The rules read the loss as MLX's tensor-parallel layers do: a replicated result (all_sum,
all_gather, broadcast) feeds one loss that every rank computes alike, and a sharded result
(sum_scatter, all_to_all) feeds a loss that is the sum of each rank's part. With those rules the
gradient on every rank is the unsharded computation's gradient of that rank's inputs.

Inside `mx.compile` and `mx.vmap` an array is a placeholder with no value, and a host call can
only either fail or bake one trace's values into the graph; so such a call raises
`UnsupportedTransformError` saying so and what to do instead.

How a traced array is told apart, for the price of nothing outside a transform: the plain path
evaluates its input anyway, and `mx.async_eval` refuses an unevaluated array that MLX is
tracing ("[async_eval] Not allowed inside a graph transformation") before scheduling anything.
Then `mx.eval` tells the transforms apart: inside mx.grad it works (MLX keeps the graph),
inside mx.compile and mx.vmap it raises. An input that the traced function itself evaluated
before the call (`mx.eval(h)` inside the loss) is evaluated already and passes for a constant:
see docs/mlx.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

import ringcomm as _rc

from .. import ops as _ops
from ..arrays import adapt
from ..errors import RingcommError
from ..group import Group, world

__all__ = ["UnsupportedTransformError", "dispatch", "run", "OPS"]

# The ops of ringcomm.ops that take an array first (what the hook may hand over).
OPS = ("all_sum", "all_max", "all_min", "all_reduce", "all_gather", "all_gather_v",
       "sum_scatter", "reduce_scatter", "reduce_scatter_v", "all_to_all", "all_to_all_v",
       "broadcast", "gather", "scatter", "send", "recv_like")

_async_eval = mx.async_eval


class UnsupportedTransformError(RingcommError):
    """A ringcomm call inside an MLX transform that a host call cannot honour."""


def dispatch(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The frameworks hook: NotImplemented outside MLX's transforms, else the traced call."""
    try:
        _async_eval(x)
    except ValueError:
        return _traced(op, x, args, kwargs)
    return NotImplemented


def run(op: str, x: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
    """Run ringcomm's `op` on the MLX array `x`: the host call outside a transform,
    differentiable inside mx.grad/vjp/jvp, refused inside mx.compile/mx.vmap."""
    kwargs = kwargs or {}
    try:
        _async_eval(x)
    except ValueError:
        return _traced(op, x, args, kwargs)
    return _host(op, x, args, kwargs)


def _host(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The plain call on the evaluated `x` (NumPy in, so ringcomm's hook is not asked again)."""
    ad = adapt(x)
    result = getattr(_rc, op)(ad.array, *args, **kwargs)
    if op == "send":
        return x
    return ad.wrap(result)


def _compile_message(op: str) -> str:
    return (
        f"ringcomm.{op} was called inside mx.compile or mx.vmap: there the array is a "
        "placeholder with no value, and a collective is a host call that needs one (a "
        "compiled graph would replay the values of its first trace). Call the collective "
        "outside the compiled or vmapped function (compile the parts before and after it "
        "separately), or loop over the batch instead of vmap. mx.grad, mx.value_and_grad, "
        "mx.vjp, mx.jvp and mx.checkpoint are supported.")


def _traced(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if kwargs.get("async_op"):
        raise UnsupportedTransformError(
            f"ringcomm.{op}(async_op=True) inside an MLX transform (mx.grad, mx.vjp, ...): a "
            "Work cannot carry a gradient; call it without async_op inside the transform")
    try:
        mx.eval(x)
    except ValueError as e:  # "[eval] Attempting to eval an array during ... compile or vmap"
        raise UnsupportedTransformError(_compile_message(op)) from e
    kwargs = {k: v for k, v in kwargs.items() if k != "async_op"}
    if op == "send":  # the identity: its result is its input (ringcomm.send returns x)
        _host(op, x, args, kwargs)
        return x
    if op == "recv_like":  # x is a template of shape and dtype: a constant, exactly
        return _host(op, x, args, kwargs)
    rule = _RULES.get(op)
    if rule is None:
        return _custom(op, x, args, kwargs, _refuse(op), _refuse(op))
    return rule(op, x, args, kwargs)


# The rules. Each builds the custom function of one call: `args` and `kwargs` (group=, op=,
# root=, counts) are static; vjp and jvp call the collectives through `run`, so a gradient of
# a gradient is traced too.

Rule = Callable[[Any], Any]


def _custom(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
            vjp: Rule, jvp: Rule) -> Any:
    def forward(a: Any) -> Any:
        return _host(op, a, args, kwargs)

    f = mx.custom_function(forward)
    f.vjp(lambda primals, cotangent, output: vjp(cotangent))
    f.jvp(lambda primals, tangent: jvp(tangent))
    return f(x)


def _refuse(op: str, what: str = "") -> Rule:
    def rule(_: Any) -> Any:
        raise UnsupportedTransformError(
            f"ringcomm.{op}{what} has no gradient rule (MLX defines none for it), and a "
            "gradient flows through it here; wrap it in mx.stop_gradient if none should, or "
            "write the rule with mx.custom_function")
    return rule


def _group_of(kwargs: dict[str, Any]) -> Group:
    g = kwargs.get("group")
    return g if g is not None else world()


def _along(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"group": kwargs["group"]} if kwargs.get("group") is not None else {}


def _reduce_op(args: tuple[Any, ...], kwargs: dict[str, Any], at: int = 0) -> str:
    op = args[at] if len(args) > at else kwargs.get("op", "sum")
    return str(getattr(op, "value", op)).lower()


def _same(op: str, args: tuple[Any, ...] = (), **extra: Any) -> Callable[[dict[str, Any]],
                                                                      Rule]:
    """The rule 'the same collective of the tangent' (or of the cotangent)."""
    def make(kwargs: dict[str, Any]) -> Rule:
        return lambda t: run(op, t, args, {**_along(kwargs), **extra})
    return make


def _identity(t: Any) -> Any:
    return t


def _all_reduce_like(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if op in ("all_sum", "all_max", "all_min"):
        return _custom(op, x, args, kwargs, _identity, _same(op)(kwargs))
    rop = _reduce_op(args, kwargs)
    jvp = lambda t: run("all_reduce", t, (rop,), _along(kwargs))  # noqa: E731
    if rop in ("sum", "max", "min"):
        return _custom(op, x, args, kwargs, _identity, jvp)
    if rop == "avg":
        size = _group_of(kwargs).size()
        return _custom(op, x, args, kwargs, lambda ct: ct / size, jvp)
    return _custom(op, x, args, kwargs, _refuse(op, f"(op={rop!r})"), _refuse(op, f"(op={rop!r})"))


def _rows(ct: Any, start: int, n: int, shape: Sequence[int]) -> Any:
    return ct[start:start + n].reshape(shape)


def _all_gather(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    g = _group_of(kwargs)
    n = x.shape[0] if x.ndim else 1
    shape = x.shape
    return _custom(op, x, args, kwargs, lambda ct: _rows(ct, g.rank() * n, n, shape),
                   _same("all_gather")(kwargs))


def _counts_of_all(x: Any, kwargs: dict[str, Any]) -> list[int]:
    """Every rank's row count (one small all_gather), for the rules that need offsets."""
    rows = np.array([x.shape[0] if x.ndim else 1], dtype=np.int64)
    return [int(c) for c in _ops.all_gather(rows, **_along(kwargs))]


def _all_gather_v(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    counts = args[0] if args else kwargs.pop("counts", None)
    counts = [int(c) for c in counts] if counts is not None else _counts_of_all(x, kwargs)
    r = _group_of(kwargs).rank()
    start, shape = sum(counts[:r]), x.shape
    return _custom(op, x, (counts,), kwargs, lambda ct: _rows(ct, start, counts[r], shape),
                   _same("all_gather_v", (counts,))(kwargs))


def _reduce_scatter(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    rop = "sum" if op == "sum_scatter" else _reduce_op(args, kwargs)
    if rop not in ("sum", "avg"):
        return _custom(op, x, args, kwargs, _refuse(op, f"(op={rop!r})"),
                       _refuse(op, f"(op={rop!r})"))
    scale = 1.0 / _group_of(kwargs).size() if rop == "avg" else 1.0
    gather = _same("all_gather")(kwargs)
    return _custom(op, x, args, kwargs,
                   (lambda ct: gather(ct) * scale) if scale != 1.0 else gather,
                   _same(op, args)(kwargs))


def _reduce_scatter_v(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    counts = [int(c) for c in (args[0] if args else kwargs.pop("counts"))]
    rop = _reduce_op(args, kwargs, at=1)
    if rop not in ("sum", "avg"):
        return _custom(op, x, (counts, rop), kwargs, _refuse(op, f"(op={rop!r})"),
                       _refuse(op, f"(op={rop!r})"))
    kwargs.pop("op", None)
    scale = 1.0 / _group_of(kwargs).size() if rop == "avg" else 1.0
    gather = _same("all_gather_v", (counts,))(kwargs)
    return _custom(op, x, (counts, rop), kwargs, lambda ct: gather(ct) * scale,
                   _same(op, (counts, rop))(kwargs))


def _broadcast(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    root = int(args[0] if args else kwargs.pop("root", 0))
    mine = _group_of(kwargs).rank() == root
    return _custom(op, x, (root,), kwargs, _identity if mine else mx.zeros_like,
                   _same("broadcast", (root,))(kwargs))


def _all_to_all(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _custom(op, x, args, kwargs, _same("all_to_all")(kwargs), _same("all_to_all")(kwargs))


def _all_to_all_v(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    send = [int(c) for c in (args[0] if args else kwargs.pop("send_counts"))]
    recv = args[1] if len(args) > 1 else kwargs.pop("recv_counts", None)
    if recv is None:  # what every rank sends this one: one small all_to_all of the counts
        recv = _ops.all_to_all(np.array(send, dtype=np.int64), **_along(kwargs))
    recv = [int(c) for c in recv]
    return _custom(op, x, (send, recv), kwargs, _same("all_to_all_v", (recv, send))(kwargs),
                   _same("all_to_all_v", (send, recv))(kwargs))


_RULES: dict[str, Callable[[str, Any, tuple[Any, ...], dict[str, Any]], Any]] = {
    "all_sum": _all_reduce_like,
    "all_max": _all_reduce_like,
    "all_min": _all_reduce_like,
    "all_reduce": _all_reduce_like,
    "all_gather": _all_gather,
    "all_gather_v": _all_gather_v,
    "sum_scatter": _reduce_scatter,
    "reduce_scatter": _reduce_scatter,
    "reduce_scatter_v": _reduce_scatter_v,
    "broadcast": _broadcast,
    "all_to_all": _all_to_all,
    "all_to_all_v": _all_to_all_v,
}
