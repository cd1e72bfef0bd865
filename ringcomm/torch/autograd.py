"""Differentiable collectives for torch tensors: the torch module of ringcomm's frameworks hook.

`ringcomm.all_sum(t)` on a tensor that requires grad (or inside `torch.func.grad`, `vjp`,
`jvp`, or `torch.autograd.forward_ad`) comes here through `dispatch` and returns a tensor
whose backward is another collective, following `torch.distributed.nn.functional`:

=====================================  ================================================
forward                                backward (the gradient `g` of the output)
=====================================  ================================================
all_sum, all_reduce sum                all_reduce sum of g
all_reduce avg                         all_reduce avg of g
all_gather / all_gather_v              reduce_scatter (sum) / reduce_scatter_v of g
sum_scatter, reduce_scatter sum (_v)   all_gather (_v) of g
reduce_scatter avg (_v)                all_gather (_v) of g, divided by the group size
broadcast(root)                        sum of g on root, zeros elsewhere
all_to_all / all_to_all_v              all_to_all / all_to_all_v the other way
gather(root) / scatter(root)           scatter / gather from and to root
all_max, all_min, prod, bitwise        forward only: backward raises, naming the op
=====================================  ================================================

Forward mode (`torch.func.jvp`, `forward_ad`) applies the same collective to the tangent (the
ops above are linear). `torch.func.vmap` over a collective raises. send/recv have no rule in
torch and take the plain path (a received tensor does not depend on the template's values).

Every backward collective runs when torch's autograd engine reaches its node. The engine
visits a graph in an order fixed by the graph alone, so ranks that build the same graph (the
same collectives in the same order, each output used or not used alike) call the backward
collectives in the same order. A rank whose graph differs gets a MismatchError or a deadline
error, never a wrong gradient.

Importing this module needs torch but not torch.distributed's process group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.autograd import Function
from torch.autograd import forward_ad as _forward_ad

from ringcomm import frameworks
from ringcomm.signature import ReduceOp

__all__ = [
    "all_gather",
    "all_gather_v",
    "all_max",
    "all_min",
    "all_reduce",
    "all_sum",
    "all_to_all",
    "all_to_all_v",
    "broadcast",
    "dispatch",
    "gather",
    "reduce_scatter",
    "reduce_scatter_v",
    "scatter",
    "sum_scatter",
]

# Ops whose result depends on x's values and that have a rule (or raise in backward).
_COLLECTIVES = frozenset({
    "all_sum", "all_max", "all_min", "all_reduce", "all_gather", "all_gather_v", "sum_scatter",
    "reduce_scatter", "reduce_scatter_v", "broadcast", "all_to_all", "all_to_all_v", "gather",
    "scatter",
})
_LINEAR_REDUCTIONS = (ReduceOp.SUM, ReduceOp.AVG)

_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_is_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active


@dataclass(frozen=True)
class _Call:
    """One collective with every argument fixed: what forward runs and backward transposes."""

    op: str                       # the ringcomm.ops function
    args: tuple[Any, ...]         # its positional arguments after x, normalised
    group: Any                    # the Group, or None for the world
    rank: int
    size: int
    reduction: ReduceOp | None = None   # all_reduce, reduce_scatter(_v), all_max/all_min

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The collective on x's values, outside autograd."""
        return _plain(self.op)(x.detach(), *self.args, group=self.group)

    def with_op(self, op: str, *args: Any) -> _Call:
        return _Call(op, args, self.group, self.rank, self.size)

    def linear(self) -> bool:
        return self.reduction is None or self.reduction in _LINEAR_REDUCTIONS


_plain = frameworks.plain  # ringcomm.ops.<op> without the frameworks hook


def _transform() -> str:
    """The name of the innermost torch.func transform active now ('' outside any)."""
    interpreter = torch._C._functorch.peek_interpreter_stack()
    if interpreter is None:
        return ""
    return f"torch.func.{interpreter.key().name.lower()}"


def _nondifferentiable(call: _Call, mode: str) -> RuntimeError:
    what = f"a {call.reduction.value} reduction" if call.reduction is not None else call.op
    return RuntimeError(
        f"ringcomm.{call.op}: {mode} is not defined for {what} (only sum and avg reductions "
        "and the data-movement collectives are differentiable); detach the input "
        "(x.detach()) to use the forward value alone, or write the rule yourself (for a "
        "maximum: all_gather the values and route the gradient to the rank that holds it)")


class _Collective(Function):
    """One differentiable collective; its backward applies the transposed collective, itself
    through this Function, so a backward is differentiable in turn (double backward)."""

    @staticmethod
    def forward(call: _Call, x: torch.Tensor) -> torch.Tensor:
        return call.run(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        call, x = inputs
        ctx.call = call
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, _transpose(ctx.call, g, ctx.shape)

    @staticmethod
    def jvp(ctx: Any, _call: None, t: torch.Tensor) -> torch.Tensor:
        call: _Call = ctx.call
        if not call.linear():
            raise _nondifferentiable(call, "forward-mode differentiation (jvp)")
        return _collective(call, t)

    @staticmethod
    def vmap(info: Any, in_dims: Any, call: _Call, x: torch.Tensor) -> Any:
        raise RuntimeError(
            f"ringcomm.{call.op} under torch.func.vmap: a collective is one call per rank and "
            "cannot be batched by vmap; call the collective on the whole batch outside vmap "
            "(collectives act on every element, so the batched array is one call), or loop "
            "over the batch")


class _EagerCollective(Function):
    """_Collective for plain autograd, outside torch.func: the same rules, without the
    signature binding that torch's apply does for a Function with setup_context (about 10 us a
    call, more than the collective at 4 bytes)."""

    @staticmethod
    def forward(ctx: Any, call: _Call, x: torch.Tensor) -> torch.Tensor:
        ctx.call = call
        ctx.shape = x.shape
        return call.run(x)

    backward = _Collective.backward
    jvp = _Collective.jvp


def _collective(call: _Call, x: torch.Tensor) -> torch.Tensor:
    """The differentiable collective: torch.func's Function inside a transform, else the
    cheaper one."""
    if _functorch_active():
        return _Collective.apply(call, x)
    return _EagerCollective.apply(call, x)


def _transpose(call: _Call, g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The gradient of x given the gradient g of call's output: the transposed collective."""
    op = call.op
    if not call.linear() or op in ("all_max", "all_min"):
        raise _nondifferentiable(call, "a gradient")
    apply = _collective
    avg = call.reduction is ReduceOp.AVG
    if op == "all_sum":
        return apply(call, g)
    if op == "all_reduce":
        return apply(call, g)  # sum -> sum, avg -> avg: torch's rule
    if op == "all_gather":
        return apply(call.with_op("sum_scatter"), g).reshape(shape)
    if op == "all_gather_v":
        return apply(call.with_op("reduce_scatter_v", call.args[0], "sum"), g)
    if op in ("sum_scatter", "reduce_scatter"):
        out = apply(call.with_op("all_gather"), g)
        return out / call.size if avg else out
    if op == "reduce_scatter_v":
        out = apply(call.with_op("all_gather_v", call.args[0]), g)
        return out / call.size if avg else out
    if op == "broadcast":
        total = apply(call.with_op("all_sum"), g)
        return total if call.rank == call.args[0] else torch.zeros_like(total)
    if op == "all_to_all":
        return apply(call, g)
    if op == "all_to_all_v":
        send_counts, recv_counts = call.args
        return apply(call.with_op("all_to_all_v", recv_counts, send_counts), g)
    if op == "gather":
        root = call.args[0]
        rows = 1 if len(shape) == 0 else shape[0]
        if call.rank != root:  # every rank passes root's shape to scatter
            g = g.new_zeros((rows * call.size, *shape[1:]))
        return apply(call.with_op("scatter", root), g).reshape(shape)
    if op == "scatter":
        root = call.args[0]
        out = apply(call.with_op("gather", root), g)
        return out.reshape(shape) if call.rank == root else g.new_zeros(shape)
    raise AssertionError(f"no rule for {op}")  # pragma: no cover - _COLLECTIVES lists them


# -- building a call ------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> int:
    return 1 if x.dim() == 0 else int(x.shape[0])


def _counts(values: Any) -> tuple[int, ...]:
    return tuple(int(c) for c in values)


def _exchange(op: str, mine: Sequence[int], group: Any) -> tuple[int, ...]:
    """Every rank's count (all_gather) or what every rank sends here (all_to_all): the counts a
    backward needs, which the forward's own exchange would not tell."""
    return _counts(_plain(op)(np.asarray(mine, dtype=np.int64), group=group))


# Calls without positional arguments, by (op, group, reduce op): most calls are these, and
# building one costs about as much as a small collective's plain path.
_made: dict[tuple[str, Any, Any], _Call] = {}
_PLAIN_KEYS = frozenset({"group", "stream", "async_op", "op"})


def _make_call(op: str, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
    """Fix every argument of `op`'s call (as ringcomm.ops would read them), exchanging the
    counts a backward needs where the caller let the forward find them."""
    if not args and not kwargs.get("async_op") and kwargs.keys() <= _PLAIN_KEYS:
        key = (op, kwargs.get("group"), kwargs.get("op"))
        call = _made.get(key)
        if call is None:
            call = _made[key] = _new_call(op, x, args, kwargs)
        return call
    return _new_call(op, x, args, kwargs)


def _new_call(op: str, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call:
    def counts(name: str, value: Any, send: tuple[int, ...]) -> tuple[int, ...]:
        if value is not None:
            return _counts(value)
        if name == "counts" and op == "all_gather_v":  # every rank's rows, for the backward
            return _exchange("all_gather", [_rows(x)], kwargs.get("group"))
        if name == "recv_counts":  # what every rank sends here, for the backward
            return _exchange("all_to_all", send, kwargs.get("group"))
        return ()  # required: ringcomm's own call says it is missing

    return _Call(*frameworks.fix(
        op, args, kwargs, counts, "cannot carry torch's autograd graph (a Work is not a "
        "tensor); call it blocking, or pass x.detach() where no gradient is wanted"))


# -- the hook -------------------------------------------------------------------------------


def _tracked(x: torch.Tensor) -> bool:
    """Does a call on x have to keep a graph: autograd, a torch.func transform, forward AD?"""
    if _is_wrapped(x):
        return True
    if x.requires_grad and torch.is_grad_enabled():
        return True
    return _forward_ad._current_level >= 0 and _forward_ad.unpack_dual(x).tangent is not None


def _differentiable(op: str, x: torch.Tensor, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
    if op not in _COLLECTIVES:  # send, recv_like: no rule in torch
        if _is_wrapped(x):
            raise RuntimeError(
                f"ringcomm.{op} under {_transform() or 'a torch.func transform'}: point-to-point "
                "calls have no differentiation rule (torch defines none); call them outside "
                "the transform on plain tensors")
        return NotImplemented
    if _transform() == "torch.func.vmap":  # before _make_call's exchanges move anything
        _Collective.vmap(None, None, _Call(op, (), None, 0, 1), x)
    return _collective(_make_call(op, x, args, kwargs), x)


@torch._dynamo.disable  # type: ignore[untyped-decorator,unused-ignore]
def _eager(op: str, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The whole call, run eagerly: torch.compile breaks its graph here instead of tracing
    ringcomm's NumPy and socket code (a traced copy of a buffer the backend writes would be a
    wrong result, not an error)."""
    if _tracked(x):
        result = _differentiable(op, x, args, kwargs)
        if result is not NotImplemented:
            return result
    return _plain(op)(x, *args, **kwargs)


def dispatch(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The frameworks hook: NotImplemented for a plain tensor (ringcomm's plain path), else the
    differentiable collective, or a clear error for what cannot be differentiated."""
    if _is_compiling():
        return _eager(op, x, args, kwargs)
    if not _tracked(x):
        return NotImplemented
    return _differentiable(op, x, args, kwargs)


# -- the public functions (torch.distributed.nn.functional's role, ringcomm's shapes) --------


def _apply(op: str, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = dispatch(op, x, args, kwargs)
    return _plain(op)(x, *args, **kwargs) if result is NotImplemented else result


def all_sum(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """The sum of x over ranks; backward: the sum of the gradients over ranks."""
    return _apply("all_sum", x, (), {"group": group})


def all_reduce(x: torch.Tensor, op: Any = "sum", *, group: Any = None) -> torch.Tensor:
    """all_reduce with `op`; differentiable for sum (backward: sum) and avg (backward: avg)."""
    return _apply("all_reduce", x, (op,), {"group": group})


def all_max(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """The elementwise maximum over ranks; its backward raises (no rule)."""
    return _apply("all_max", x, (), {"group": group})


def all_min(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """The elementwise minimum over ranks; its backward raises (no rule)."""
    return _apply("all_min", x, (), {"group": group})


def all_gather(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """Every rank's x along axis 0; backward: reduce-scatter (sum) of the gradient."""
    return _apply("all_gather", x, (), {"group": group})


def all_gather_v(x: torch.Tensor, counts: Sequence[int] | None = None, *,
                 group: Any = None) -> torch.Tensor:
    """all_gather of uneven row counts; backward: reduce_scatter_v (sum) of the gradient."""
    return _apply("all_gather_v", x, (counts,), {"group": group})


def sum_scatter(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """This rank's rows of the sum over ranks; backward: all_gather of the gradient."""
    return _apply("sum_scatter", x, (), {"group": group})


def reduce_scatter(x: torch.Tensor, op: Any = "sum", *, group: Any = None) -> torch.Tensor:
    """reduce_scatter with `op`; differentiable for sum and avg (backward: all_gather, /size
    for avg)."""
    return _apply("reduce_scatter", x, (op,), {"group": group})


def reduce_scatter_v(x: torch.Tensor, counts: Sequence[int], op: Any = "sum", *,
                     group: Any = None) -> torch.Tensor:
    """reduce_scatter of uneven row counts; backward: all_gather_v of the gradient."""
    return _apply("reduce_scatter_v", x, (counts, op), {"group": group})


def broadcast(x: torch.Tensor, root: int = 0, *, group: Any = None) -> torch.Tensor:
    """root's x on every rank; backward: the gradients' sum on root, zeros elsewhere."""
    return _apply("broadcast", x, (root,), {"group": group})


def all_to_all(x: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """Block j of x to rank j; backward: all_to_all of the gradient."""
    return _apply("all_to_all", x, (), {"group": group})


def all_to_all_v(x: torch.Tensor, send_counts: Sequence[int],
                 recv_counts: Sequence[int] | None = None, *, group: Any = None) -> torch.Tensor:
    """all_to_all of uneven blocks; backward: all_to_all_v back (counts swapped)."""
    return _apply("all_to_all_v", x, (send_counts, recv_counts), {"group": group})


def gather(x: torch.Tensor, root: int = 0, *, group: Any = None) -> torch.Tensor:
    """Every rank's x on root (empty elsewhere); backward: scatter from root. Every rank must
    use its (empty) result in the loss, so that its backward runs everywhere."""
    return _apply("gather", x, (root,), {"group": group})


def scatter(x: torch.Tensor, root: int = 0, *, group: Any = None) -> torch.Tensor:
    """Block r of root's x on rank r; backward: gather to root (zeros on the other ranks)."""
    return _apply("scatter", x, (root,), {"group": group})
