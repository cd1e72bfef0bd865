"""Data-parallel training helpers: tree utilities, `average_gradients`, `GradientReducer`.

A *tree* is any nesting of dicts, lists and tuples (named tuples included)
whose other values are *leaves* (arrays, numbers, None, ...). The utilities
follow `mlx.utils`:

    tree_map(lambda g: g * 0.5, {"w": w, "b": [b0, b1]})
    tree_flatten({"w": w, "b": [b0, b1]})      # [("w", w), ("b.0", b0), ("b.1", b1)]
    tree_unflatten([("w", w), ("b.0", b0)])    # {"w": w, "b": [b0]}

`tree_map` keeps container types (a named tuple stays that named tuple);
`tree_unflatten` rebuilds dicts and lists only, like MLX, because dotted keys
do not record tuple types.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops
from .arrays import adapt, bfloat16
from .group import Group, Work, world

__all__ = ["GradientReducer", "average_gradients", "tree_flatten", "tree_map", "tree_unflatten"]

IsLeaf = Callable[[Any], bool] | None


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _is_container(x: Any, is_leaf: IsLeaf) -> bool:
    if is_leaf is not None and is_leaf(x):
        return False
    return isinstance(x, (dict, list, tuple))


def _child(tree: Any, key: Any, where: str) -> Any:
    try:
        return tree[key]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"tree_map: trees differ at {where or '<root>'!r}: expecting a container with "
            f"key {key!r}, got {type(tree).__name__}; pass trees of the same structure"
        ) from None


def _map(fn: Callable[..., Any], tree: Any, rest: tuple[Any, ...], is_leaf: IsLeaf,
         where: str) -> Any:
    if not _is_container(tree, is_leaf):
        return fn(tree, *rest)
    dot = where + "." if where else ""
    if isinstance(tree, dict):
        items = {k: _map(fn, v, tuple(_child(r, k, dot + str(k)) for r in rest), is_leaf,
                         dot + str(k))
                 for k, v in tree.items()}
        if type(tree) is dict:
            return items
        out = copy.copy(tree)  # keeps OrderedDict, defaultdict's factory, ...
        out.clear()
        out.update(items)
        return out
    values = [_map(fn, v, tuple(_child(r, i, dot + str(i)) for r in rest), is_leaf, dot + str(i))
              for i, v in enumerate(tree)]
    if isinstance(tree, list):
        return values if type(tree) is list else type(tree)(values)
    if _is_namedtuple(tree):
        return type(tree)(*values)
    return type(tree)(values)


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any, is_leaf: IsLeaf = None) -> Any:
    """Return a tree like `tree` with `fn(leaf, *matching leaves of rest)` at every leaf.

    `rest` trees must hold at least the keys and indices of `tree`; their
    leaves at the same places become extra arguments of `fn`. `is_leaf(x)`
    returning True stops the descent at `x`. Container types are kept: dicts
    (and subclasses), lists, tuples and named tuples.
    """
    return _map(fn, tree, rest, is_leaf, "")


def tree_flatten(tree: Any, prefix: str = "", is_leaf: IsLeaf = None) -> list[tuple[str, Any]]:
    """Return the leaves of `tree` as (dotted key, leaf) pairs, in depth-first order.

    Dict keys and list or tuple indices are joined with dots: ``{"a": [x, y]}``
    gives ``[("a.0", x), ("a.1", y)]``. A bare leaf gives ``[(prefix, leaf)]``.
    """
    out: list[tuple[str, Any]] = []

    def walk(node: Any, key: str) -> None:
        if not _is_container(node, is_leaf):
            out.append((key, node))
            return
        dot = key + "." if key else ""
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in pairs:
            walk(v, f"{dot}{k}")

    walk(tree, prefix)
    return out


def tree_unflatten(items: Iterable[tuple[str, Any]]) -> Any:
    """Return the tree of dicts and lists that `tree_flatten` pairs describe.

    A level whose keys are all integers becomes a list (indices must run
    0..n-1); any other level becomes a dict. A single pair with key "" is a
    bare leaf.
    """
    items = list(items)
    if len(items) == 1 and items[0][0] == "":
        return items[0][1]
    root: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"tree_unflatten: expecting non-empty dotted string keys, got {key!r}; "
                "pass the output of tree_flatten"
            )
        node = root
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):  # a bad key, not a bad type: ValueError
                raise ValueError(
                    f"tree_unflatten: key {key!r} goes below the leaf at {part!r}"
                )
            node = child
        if last in node:
            raise ValueError(f"tree_unflatten: key {key!r} appears twice")
        node[last] = value
    return _listify(root, "")


def _listify(node: Any, where: str) -> Any:
    if not isinstance(node, dict):
        return node
    dot = where + "." if where else ""
    children = {k: _listify(v, dot + k) for k, v in node.items()}
    if children and all(k.isdigit() for k in children):
        indices = sorted(int(k) for k in children)
        if indices != list(range(len(indices))):
            raise ValueError(
                f"tree_unflatten: list at {where or '<root>'!r} needs indices 0..{len(indices) - 1}, "
                f"got {indices}"
            )
        return [children[str(i)] for i in indices]
    return children


# --- average_gradients -------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """Leaves (by position) reduced together in one all_sum: same dtype, at most the byte limit."""

    dtype: np.dtype
    indices: tuple[int, ...]
    nbytes: int


def plan_buckets(leaves: Sequence[tuple[np.dtype, int]], limit: int) -> list[Bucket]:
    """Return the all_sum buckets for leaves given as (dtype, nbytes), in a rank-independent order.

    Leaves of one dtype fill a bucket in order until the next one would pass
    `limit` bytes; a leaf larger than `limit` gets a bucket of its own. With
    `limit <= 0` every leaf is its own bucket. A bucket is emitted when it is
    full; the partly filled ones follow, in order of their dtype's first leaf.
    """
    if limit <= 0:
        return [Bucket(np.dtype(dt), (i,), int(n)) for i, (dt, n) in enumerate(leaves)]
    done: list[Bucket] = []
    open_: dict[np.dtype, tuple[list[int], int]] = {}
    for i, (dt, n) in enumerate(leaves):
        dt, n = np.dtype(dt), int(n)
        idx, total = open_.get(dt, ([], 0))
        if idx and total + n > limit:
            done.append(Bucket(dt, tuple(idx), total))
            idx, total = [], 0
        open_[dt] = (idx + [i], total + n)
    done.extend(Bucket(dt, tuple(idx), total) for dt, (idx, total) in open_.items() if idx)
    return done


_scratch = threading.local()


def _pack_buffer(dtype: np.dtype, n: int) -> np.ndarray:
    """Return a flat scratch array of `n` elements, reused across calls (per thread and dtype).

    A fresh buffer of tens of MiB costs a page fault per 4 KiB on every call;
    reusing one keeps the packing at memory bandwidth. all_sum never writes
    into it, so no result aliases it.
    """
    cache = _scratch.__dict__.setdefault("buffers", {})
    buf = cache.get(dtype)
    if buf is None or buf.size < n:
        buf = cache[dtype] = np.empty(n, dtype=dtype)
    return buf[:n]


def _check_float(dt: np.dtype, key: str) -> None:
    if dt.kind not in "fc" and dt.name != "bfloat16":
        raise TypeError(
            f"average_gradients: expecting floating-point gradients, got {dt} at "
            f"{key or '<root>'!r}; cast it, or reduce it with all_sum"
        )


def _wire_dtype(dt: Any) -> np.dtype:
    """Return the NumPy dtype of a floating NumPy, torch or MLX dtype (or its name)."""
    name = str(dt).rsplit(".", 1)[-1]  # torch.float16, mlx.core.float16
    try:
        wire = bfloat16 if name == "bfloat16" and bfloat16 is not None else np.dtype(dt)
    except TypeError:
        try:
            wire = np.dtype(name)
        except TypeError:
            wire = None
    if wire is None or (wire.kind not in "fc" and wire != bfloat16):
        raise TypeError(
            f"average_gradients: communication_type must be a floating dtype, got {dt!r}; "
            "try float16 or bfloat16"
        )
    return wire


# The default bucket: on a 2-core machine over loopback, 2 ranks, a 49.6 MiB tree of 100 float32
# arrays (1 KiB to 4 MiB) took 27.5-30.3 ms in 2 MiB buckets against 36.5-39.5 ms in 32 MiB ones
# and 30.5-49.5 ms unfused (benchmarks/average_gradients.py --buckets, two runs): buckets that
# stay on the ring's latency path beat one large pipelined call there, and between machines 25
# calls' latency is small against 50 MiB of transfer.
DEFAULT_BUCKET_BYTES = 2 << 20


def average_gradients(grads: Any, group: Group | None = None,
                      all_reduce_size: int = DEFAULT_BUCKET_BYTES,
                      communication_type: Any = None, *, async_op: bool = False) -> Any:
    """Return `grads` averaged over the ranks of `group`, as the same tree of the same array types.

    Arrays of one dtype are packed into flat buffers of at most
    `all_reduce_size` bytes, so many small gradients cost one `all_sum`;
    `all_reduce_size <= 0` reduces every array alone. `communication_type`
    (a NumPy, torch or MLX dtype, e.g. float16) casts the buffers before the
    sum and back after it, trading precision for fewer bytes on the wire.
    None leaves (a torch parameter without a gradient) stay None. In a group
    of size 1 `grads` comes back as is, without communication. Every rank
    must pass a tree of the same structure, shapes and dtypes. One packing
    buffer per dtype (at most `all_reduce_size` bytes, or the largest
    bucket) is kept between blocking calls.

    With ``async_op=True`` it returns a `Work` at once: every bucket's all_sum is
    in flight, and ``work.result()`` is the averaged tree. The gradients are
    packed before it returns, so they may change afterwards.
    """
    g = group if group is not None else world()
    size = g.size()
    if size == 1:
        if async_op:
            done = Work()
            done.set_result(grads)
            return done
        return grads
    wire = None if communication_type is None else _wire_dtype(communication_type)
    pairs = tree_flatten(grads)
    keys, leaves = [k for k, _ in pairs], [leaf for _, leaf in pairs]
    live = [i for i, leaf in enumerate(leaves) if leaf is not None]
    adapted = [adapt(leaves[i]) for i in live]
    for i, ad in zip(live, adapted):
        _check_float(ad.array.dtype, keys[i])
    plan = plan_buckets(
        [(ad.array.dtype, ad.array.size * (ad.array.dtype if wire is None else wire).itemsize)
         for ad in adapted],
        all_reduce_size,
    )
    sums: list[Any] = []
    layout: list[tuple[list[np.ndarray], np.ndarray]] = []  # each bucket's leaves and offsets
    for bucket in plan:
        parts = [adapted[j].array for j in bucket.indices]
        bounds = np.cumsum([0] + [p.size for p in parts])
        layout.append((parts, bounds))
        comm = bucket.dtype if wire is None else wire
        if len(parts) == 1 and comm == bucket.dtype:
            sent = parts[0]  # nothing to pack or cast
            if async_op:
                sent = sent.copy()  # the caller may change its gradient while the sum runs
        else:
            # In flight, each bucket needs a buffer of its own.
            n = int(bounds[-1])
            sent = np.empty(n, dtype=comm) if async_op else _pack_buffer(comm, n)
            for p, lo, hi in zip(parts, bounds, bounds[1:]):
                sent[lo:hi].reshape(p.shape)[...] = p  # one copy per leaf, strided or not
        sums.append(ops.all_sum(sent, group=g, async_op=async_op) if async_op
                    else ops.all_sum(sent, group=g))

    def finish() -> Any:
        results: list[Any] = list(leaves)
        for bucket, got, (parts, bounds) in zip(plan, sums, layout):
            total = np.asarray(got.result() if async_op else got)
            if total.dtype != bucket.dtype:
                total = total.astype(bucket.dtype)
            elif any(np.may_share_memory(total, p) for p in parts):
                total = total.copy()  # no result may alias the input
            np.divide(total, size, out=total, casting="unsafe")
            flat = total.reshape(-1)
            for j, p, lo, hi in zip(bucket.indices, parts, bounds, bounds[1:]):
                results[live[j]] = adapted[j].wrap(flat[lo:hi].reshape(p.shape))
        it = iter(results)
        return tree_map(lambda _: next(it), grads)

    if async_op:  # after the sums in the group's call order, so their results are there
        return g._calls.run(finish, async_op=True)
    return finish()


class GradientReducer:
    """Average gradients over a group while the backward pass still produces them.

    ``params`` are the model's parameters in forward order: torch parameters, or
    NumPy arrays (or anything array-like) standing for them. They are grouped into
    buckets of about `bucket_bytes`, last parameter first (backward produces
    gradients from the last layer back); a bucket's all_sum starts, asynchronously,
    as soon as its last gradient has arrived, so the reduction runs while the
    backward pass goes on. Buckets start in the same order on every rank.

    torch: the reducer hooks every parameter that requires a gradient
    (``register_post_accumulate_grad_hook``) and ``wait()`` writes the averaged
    gradients into ``p.grad``. NumPy: call ``ready(i, grad)`` as each gradient is
    computed; ``wait()`` returns the averaged gradients in parameter order. A
    parameter whose gradient never came counts as zeros, so every rank makes the
    same calls. Call ``wait()`` once per step before the next backward pass.
    """

    def __init__(self, params: Iterable[Any], group: Group | None = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self._params = list(params)
        self._group = group if group is not None else world()
        self._size = self._group.size()
        self._torch = bool(self._params) and type(self._params[0]).__module__.startswith("torch")
        arrays = [self._shape_of(p) for p in self._params]
        self._shapes = [shape for shape, _ in arrays]
        self._dtypes = [dt for _, dt in arrays]
        order = list(range(len(self._params)))[::-1]
        plan = plan_buckets([(self._dtypes[i], int(np.prod(self._shapes[i], dtype=np.int64))
                              * self._dtypes[i].itemsize) for i in order], bucket_bytes)
        self._buckets = [[order[k] for k in b.indices] for b in plan]
        self._bucket_of = {i: b for b, members in enumerate(self._buckets) for i in members}
        self._buffers = [np.empty(sum(int(np.prod(self._shapes[i], dtype=np.int64))
                                      for i in members), dtype=self._dtypes[members[0]])
                         for members in self._buckets]
        self._offsets = [np.cumsum([0] + [int(np.prod(self._shapes[i], dtype=np.int64))
                                          for i in members]).tolist()
                         for members in self._buckets]
        self._hooks: list[Any] = []
        self._reset()
        if self._torch:
            for i, p in enumerate(self._params):
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(
                        lambda p, i=i: self.ready(i, p.grad)))

    @staticmethod
    def _shape_of(p: Any) -> tuple[tuple[int, ...], np.dtype]:
        a = adapt(p).array if not type(p).__module__.startswith("torch") else \
            adapt(p.detach()).array
        _check_float(a.dtype, "a parameter")
        return tuple(a.shape), a.dtype

    def _reset(self) -> None:
        self._missing = [len(members) for members in self._buckets]
        self._arrived: set[int] = set()
        self._works: list[Any] = []

    def ready(self, i: int, grad: Any) -> None:
        """Hand over parameter `i`'s gradient for this step (the torch hooks call this)."""
        if i in self._arrived:
            raise ValueError(f"GradientReducer: parameter {i}'s gradient came twice in one "
                             "step; call wait() once per step")
        b = self._bucket_of[i]
        members = self._buckets[b]
        k = members.index(i)
        lo, hi = self._offsets[b][k], self._offsets[b][k + 1]
        self._buffers[b][lo:hi] = adapt(grad).array.reshape(-1)
        self._arrived.add(i)
        self._missing[b] -= 1
        self._launch()

    def _launch(self) -> None:
        """Start every complete bucket whose predecessors have started (the same order everywhere)."""
        while len(self._works) < len(self._buckets) and self._missing[len(self._works)] == 0:
            b = len(self._works)
            self._works.append(ops.all_sum(self._buffers[b], group=self._group, async_op=True))

    def wait(self) -> list[Any] | None:
        """Finish the step: return the averaged gradients (NumPy), or write them into p.grad (torch)."""
        for b, members in enumerate(self._buckets):  # gradients that never came count as zeros
            for k, i in enumerate(members):
                if i not in self._arrived:
                    self._buffers[b][self._offsets[b][k]:self._offsets[b][k + 1]] = 0
                    self._arrived.add(i)
                    self._missing[b] -= 1
        self._launch()
        out: list[Any] = [None] * len(self._params)
        for b, work in enumerate(self._works):
            total = np.asarray(work.result())
            np.divide(total, self._size, out=total, casting="unsafe")
            for k, i in enumerate(self._buckets[b]):
                avg = total[self._offsets[b][k]:self._offsets[b][k + 1]].reshape(self._shapes[i])
                if self._torch:
                    p = self._params[i]
                    if p.grad is None:
                        import torch

                        p.grad = torch.zeros_like(p)
                    adapt(p.grad).array[...] = avg
                else:
                    out[i] = avg
        self._reset()
        return None if self._torch else out

    def close(self) -> None:
        """Remove the torch hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
