"""JAX collectives: one primitive, differentiable and usable inside jax.jit.

Every collective is the primitive `ringcomm_collective` with a `Call` (the op and all its
arguments) as its parameter:

- eagerly (concrete arrays under `jax.grad`, `jax.vjp`, `jax.jvp`), it calls ringcomm's plain
  path at once;
- inside `jax.jit` it lowers to a host callback carrying JAX's ordered IO effect (the effect of
  `io_callback(..., ordered=True)`), so the compiled program runs the collectives in program
  order, after the ones of earlier calls and before the ones of later calls, and XLA may
  neither drop nor reorder them;
- it is linear (but for max, min, prod and the bitwise reductions): its JVP applies the same
  collective to the tangent and its transpose is the collective that JAX's own primitive
  uses, as in `jax.shard_map` with check_vma=True (docs/frameworks.md):

  all_sum, all_reduce sum   psum: the result is replicated; transpose = identity
  all_reduce avg            pmean: transpose = the cotangent / group size
  all_gather(_v)            all_gather: transpose = psum_scatter (reduce_scatter_v, sum)
  sum_scatter, reduce_scatter(_v) sum (avg)   psum_scatter: transpose = all_gather (/ size)
  broadcast(root)           pbroadcast: transpose = the cotangents' sum on root, zero elsewhere
  all_to_all(_v)            all_to_all: transpose = all_to_all the other way
  gather / scatter          transpose = scatter / gather with the same root
  ppermute(perm)            ppermute: transpose = ppermute with the inverse permutation
  pvary                     pvary: identity; transpose = all_sum

`jax.vmap`, `jax.pmap` and `jax.shard_map` over a collective raise, naming the transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax._src import core as _core
from jax._src import dispatch as _jax_dispatch
from jax._src.callback import _callback_op_sharding, _OrderedIOEffect, emit_python_callback
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ringcomm import frameworks
from ringcomm.signature import ReduceOp

__all__ = [
    "Call", "all_gather", "all_gather_v", "all_max", "all_min", "all_reduce", "all_sum",
    "all_to_all", "all_to_all_v", "broadcast", "dispatch", "gather", "ppermute", "pvary",
    "reduce_scatter", "reduce_scatter_v", "scatter", "sum_scatter",
]

_LINEAR = (ReduceOp.SUM, ReduceOp.AVG)
_OPS = frozenset({
    "all_sum", "all_max", "all_min", "all_reduce", "all_gather", "all_gather_v", "sum_scatter",
    "reduce_scatter", "reduce_scatter_v", "broadcast", "all_to_all", "all_to_all_v", "gather",
    "scatter", "send", "recv_like",
})
_plain = frameworks.plain  # ringcomm.ops.<op> without the frameworks hook


@dataclass(frozen=True)
class Call:
    """One collective with every argument fixed (hashable: it is a primitive's parameter)."""

    op: str
    args: tuple[Any, ...]
    group: Any
    rank: int
    size: int
    reduction: ReduceOp | None = None

    def linear(self) -> bool:
        return self.op not in ("all_max", "all_min", "send", "recv_like") and (
            self.reduction is None or self.reduction in _LINEAR)

    def also(self, op: str, *args: Any) -> Call:
        return Call(op, args, self.group, self.rank, self.size)

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        op, size = self.op, self.size
        rows, rest = (shape[0], shape[1:]) if shape else (1, ())
        if op == "all_gather":
            return (size * rows, *rest)
        if op in ("sum_scatter", "reduce_scatter", "scatter"):
            if not shape or rows % size:
                raise ValueError(f"ringcomm.{op}: axis 0 must divide evenly among {size} ranks, "
                                 f"got shape {shape}; pad the array to a multiple of the group "
                                 "size")
            return (rows // size, *rest)
        if op == "all_gather_v":
            return (sum(self.args[0]), *rest)
        if op == "reduce_scatter_v":
            return (self.args[0][self.rank], *rest)
        if op == "all_to_all_v":
            return (sum(self.args[1]), *rest)
        if op == "gather":
            return (size * rows if self.rank == self.args[0] else 0, *rest)
        return shape

    def host(self, a: np.ndarray) -> np.ndarray:
        """Run the collective on this rank's values (ringcomm's plain path)."""
        if self.op == "ppermute":
            return _ppermute_host(self, a)
        return np.asarray(_plain(self.op)(a, *self.args, group=self.group))


def _ppermute_host(call: Call, a: np.ndarray) -> np.ndarray:
    """ppermute as one all_to_all_v: the whole array to this rank's destination, the whole
    array from its source (zeros where no rank sends here, as in JAX)."""
    (perm,) = call.args
    n = a.size
    to = [d for s, d in perm if s == call.rank]
    frm = [s for s, d in perm if d == call.rank]
    send = [n if j in to else 0 for j in range(call.size)]
    recv = [n if i in frm else 0 for i in range(call.size)]
    flat = np.ascontiguousarray(a).reshape(-1)
    out = _plain("all_to_all_v")(flat if to else flat[:0], send, recv, group=call.group)
    return np.asarray(out).reshape(a.shape) if frm else np.zeros_like(a)


# -- the primitive --------------------------------------------------------------------------

collective_p = Primitive("ringcomm_collective")
pvary_p = Primitive("ringcomm_pvary")
_jax_dispatch.prim_requires_devices_during_lowering.add(collective_p)


def _impl(x: Any, *, call: Call) -> Any:
    return jnp.asarray(call.host(np.asarray(x)))


def _abstract(x: Any, *, call: Call) -> Any:
    named = _core.get_axis_env().axis_sizes
    if named:
        raise ValueError(
            f"ringcomm.{call.op} inside jax.pmap, jax.shard_map or a named vmap (axes "
            f"{sorted(map(str, named))}): one process is one rank of ringcomm, and a collective "
            "there would run once per device; call ringcomm outside them (each process's "
            "program is already its rank's), or use jax.lax collectives over devices")
    return x.update(shape=call.out_shape(x.shape)), {_OrderedIOEffect}


def _lowering(ctx: Any, x: Any, *, call: Call) -> Any:
    def run(a: np.ndarray) -> tuple[np.ndarray]:
        return (call.host(a),)

    token = ctx.tokens_in.get(_OrderedIOEffect)
    sharding = _callback_op_sharding(ctx.module_context.axis_context, None, ctx.avals_out)
    result, token, _ = emit_python_callback(
        ctx, run, token, [x], ctx.avals_in, ctx.avals_out, has_side_effect=True,
        returns_token=True, sharding=sharding)
    ctx.set_tokens_out(ctx.tokens_in.update_tokens(mlir.TokenSet({_OrderedIOEffect: token})))
    return result


def _nondifferentiable(call: Call) -> ValueError:
    if call.op in ("send", "recv_like"):
        return ValueError(
            f"ringcomm.{call.op} has no differentiation rule (the gradient would have to cross "
            "ranks); use ringcomm.jax.ppermute, whose transpose sends the cotangent back, or "
            "jax.lax.stop_gradient the input")
    what = f"a {call.reduction.value} reduction" if call.reduction is not None else call.op
    return ValueError(
        f"ringcomm.{call.op}: no derivative is defined for {what} (only sum and avg reductions "
        "and the data-movement collectives are differentiable); wrap the input in "
        "jax.lax.stop_gradient to use the forward value alone, or write the rule (for a "
        "maximum: all_gather the values and route the cotangent to the rank that holds it)")


def _jvp(primals: Sequence[Any], tangents: Sequence[Any], *, call: Call) -> tuple[Any, Any]:
    (x,), (t,) = primals, tangents
    y = collective_p.bind(x, call=call)
    if type(t) is ad.Zero:
        return y, ad.Zero(_core.typeof(y).to_tangent_aval())
    if not call.linear():
        raise _nondifferentiable(call)
    return y, collective_p.bind(t, call=call)


def _transpose(ct: Any, x: Any, *, call: Call) -> list[Any]:
    # Zeros are instantiated: every rank runs the transposed collective, whatever its value.
    ct = ad.instantiate_zeros(ct)
    shape = x.aval.shape
    return [_transposed(call, ct, shape)]


def _transposed(call: Call, ct: Any, shape: tuple[int, ...]) -> Any:
    op, bind = call.op, collective_p.bind
    avg = call.reduction is ReduceOp.AVG
    if op in ("all_sum", "all_reduce"):
        return ct / call.size if avg else ct
    if op == "all_gather":
        return bind(ct, call=call.also("sum_scatter")).reshape(shape)
    if op == "all_gather_v":
        return bind(ct, call=call.also("reduce_scatter_v", call.args[0], "sum"))
    if op in ("sum_scatter", "reduce_scatter"):
        out = bind(ct, call=call.also("all_gather"))
        return out / call.size if avg else out
    if op == "reduce_scatter_v":
        out = bind(ct, call=call.also("all_gather_v", call.args[0]))
        return out / call.size if avg else out
    if op == "broadcast":
        total = bind(ct, call=call.also("all_sum"))
        return total if call.rank == call.args[0] else jnp.zeros_like(total)
    if op == "all_to_all":
        return bind(ct, call=call)
    if op == "all_to_all_v":
        return bind(ct, call=call.also("all_to_all_v", call.args[1], call.args[0]))
    if op == "gather":
        root = call.args[0]
        if call.rank != root:
            rows = shape[0] if shape else 1
            ct = jnp.zeros((rows * call.size, *shape[1:]), ct.dtype)
        return bind(ct, call=call.also("scatter", root)).reshape(shape)
    if op == "scatter":
        out = bind(ct, call=call.also("gather", call.args[0]))
        return out.reshape(shape) if call.rank == call.args[0] else jnp.zeros(shape, ct.dtype)
    if op == "ppermute":
        return bind(ct, call=call.also("ppermute", tuple((d, s) for s, d in call.args[0])))
    raise _nondifferentiable(call)


def _batch(args: Sequence[Any], dims: Sequence[Any], *, call: Call) -> Any:
    raise ValueError(
        f"ringcomm.{call.op} under jax.vmap: a collective is one call per rank and vmap would "
        "need it once per batch element; call it on the whole batched array outside vmap "
        "(it acts on every element), or loop over the batch")


collective_p.def_impl(_impl)
collective_p.def_effectful_abstract_eval(_abstract)
mlir.register_lowering(collective_p, _lowering, cacheable=False)
ad.primitive_jvps[collective_p] = _jvp
ad.primitive_transposes[collective_p] = _transpose
batching.primitive_batchers[collective_p] = _batch

# pvary: identity forward; its transpose sums the cotangents (a replicated value used on every
# rank: the counterpart of all_sum's identity transpose).
pvary_p.def_impl(lambda x, *, call: x)
pvary_p.def_abstract_eval(lambda x, *, call: x)
mlir.register_lowering(pvary_p, lambda ctx, x, *, call: [x])
ad.deflinear2(pvary_p, lambda ct, x, *, call: [
    collective_p.bind(ad.instantiate_zeros(ct), call=call.also("all_sum"))])
batching.primitive_batchers[pvary_p] = lambda args, dims, *, call: (
    pvary_p.bind(args[0], call=call), dims[0])


# -- building a call ------------------------------------------------------------------------


def _counts(values: Any, op: str, name: str) -> tuple[int, ...]:
    if values is None:
        raise ValueError(f"ringcomm.{op} inside a JAX transform needs {name}: the result's shape "
                         "must be known when JAX traces the call; pass every rank's counts")
    return tuple(int(c) for c in values)


def make_call(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
    """Fix every argument of ringcomm.ops.<op>(x, *args, **kwargs) as ops would read them."""
    def counts(name: str, value: Any, send: tuple[int, ...]) -> tuple[int, ...]:
        return _counts(value, op, name)

    return Call(*frameworks.fix(
        op, args, kwargs, counts, "is not available on JAX tracers (a Work is not an array); "
        "JAX orders the calls itself, call it blocking"))


# -- the hook and the public functions ------------------------------------------------------

_Tracer = _core.Tracer


def dispatch(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The frameworks hook: NotImplemented for a concrete array (ringcomm's plain path), the
    primitive for a tracer (jit, grad, vjp, jvp), or a clear error (vmap, pmap, shard_map)."""
    if not isinstance(x, _Tracer) or op not in _OPS:
        return NotImplemented
    return collective_p.bind(x, call=make_call(op, args, kwargs))


def _apply(op: str, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if isinstance(x, _Tracer):
        return collective_p.bind(x, call=make_call(op, args, kwargs))
    return _plain(op)(x, *args, **kwargs)


def all_sum(x: Any, *, group: Any = None) -> Any:
    """psum: the sum over ranks, replicated; its transpose is the identity."""
    return _apply("all_sum", x, (), {"group": group})


def all_reduce(x: Any, op: Any = "sum", *, group: Any = None) -> Any:
    """all_reduce with `op`; sum (psum) and avg (pmean) are differentiable."""
    return _apply("all_reduce", x, (op,), {"group": group})


def all_max(x: Any, *, group: Any = None) -> Any:
    """The elementwise maximum over ranks; not differentiable (raises under jvp/grad)."""
    return _apply("all_max", x, (), {"group": group})


def all_min(x: Any, *, group: Any = None) -> Any:
    """The elementwise minimum over ranks; not differentiable (raises under jvp/grad)."""
    return _apply("all_min", x, (), {"group": group})


def all_gather(x: Any, *, group: Any = None) -> Any:
    """Every rank's x along axis 0; transpose: psum_scatter."""
    return _apply("all_gather", x, (), {"group": group})


def all_gather_v(x: Any, counts: Sequence[int] | None = None, *, group: Any = None) -> Any:
    """all_gather of uneven row counts (counts required under a transform)."""
    return _apply("all_gather_v", x, (counts,), {"group": group})


def sum_scatter(x: Any, *, group: Any = None) -> Any:
    """psum_scatter: this rank's rows of the sum; transpose: all_gather."""
    return _apply("sum_scatter", x, (), {"group": group})


def reduce_scatter(x: Any, op: Any = "sum", *, group: Any = None) -> Any:
    """reduce_scatter with `op`; sum and avg are differentiable."""
    return _apply("reduce_scatter", x, (op,), {"group": group})


def reduce_scatter_v(x: Any, counts: Sequence[int], op: Any = "sum", *, group: Any = None) -> Any:
    """reduce_scatter of uneven row counts; transpose: all_gather_v."""
    return _apply("reduce_scatter_v", x, (counts, op), {"group": group})


def broadcast(x: Any, root: int = 0, *, group: Any = None) -> Any:
    """root's x on every rank; transpose: the cotangents' sum on root, zeros elsewhere."""
    return _apply("broadcast", x, (root,), {"group": group})


def all_to_all(x: Any, *, group: Any = None) -> Any:
    """Block j of x to rank j; transpose: all_to_all."""
    return _apply("all_to_all", x, (), {"group": group})


def all_to_all_v(x: Any, send_counts: Sequence[int], recv_counts: Sequence[int] | None = None,
                 *, group: Any = None) -> Any:
    """all_to_all of uneven blocks (recv_counts required under a transform)."""
    return _apply("all_to_all_v", x, (send_counts, recv_counts), {"group": group})


def gather(x: Any, root: int = 0, *, group: Any = None) -> Any:
    """Every rank's x on root (empty elsewhere); transpose: scatter from root."""
    return _apply("gather", x, (root,), {"group": group})


def scatter(x: Any, root: int = 0, *, group: Any = None) -> Any:
    """Block r of root's x on rank r; transpose: gather to root."""
    return _apply("scatter", x, (root,), {"group": group})


def _world_call(op: str, args: tuple[Any, ...], group: Any) -> Call:
    from ringcomm.group import world

    g = group if group is not None else world()
    return Call(op, args, group, g.rank(), g.size())


def ppermute(x: Any, perm: Sequence[tuple[int, int]], *, group: Any = None) -> Any:
    """JAX's ppermute over ranks: rank s's x goes to rank d for every (s, d) in perm (the same
    list on every rank); a rank that no pair sends to gets zeros. Transpose: the inverse
    permutation. One all_to_all_v."""
    pairs = tuple((int(s), int(d)) for s, d in perm)
    call = _world_call("ppermute", (pairs,), group)
    srcs, dsts = [s for s, _ in pairs], [d for _, d in pairs]
    if len(set(srcs)) != len(srcs) or len(set(dsts)) != len(dsts) or not all(
            0 <= r < call.size for r in srcs + dsts):
        raise ValueError(f"ringcomm.ppermute: perm must be (source, destination) pairs of ranks "
                         f"in [0, {call.size}), each source and each destination at most once; "
                         f"got {list(perm)!r}")
    return collective_p.bind(jnp.asarray(x), call=call)


def pvary(x: Any, *, group: Any = None) -> Any:
    """A replicated value used by each rank's own computation: the identity, whose transpose
    sums the cotangents over ranks (JAX's pvary). Put it on an input that every rank holds
    alike (a replicated activation or parameter) when the loss differs between ranks."""
    return pvary_p.bind(jnp.asarray(x), call=_world_call("all_sum", (), group))

