"""Differentiable collectives on MLX arrays: every rank's gradient against the unsharded
computation's, which every rank also runs alone (all inputs are seeded by rank).

Replicated results (all_sum, all_gather, broadcast) feed one loss that every rank computes
alike; sharded results (sum_scatter, all_to_all) feed a loss that is the sum of each rank's
part. Prints ``ok mlx_autodiff rank R`` when every check passed.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

import ringcomm
from ringcomm.mlx import autodiff
from ringcomm.mlx.autodiff import UnsupportedTransformError

world = ringcomm.init()
r, p = world.rank(), world.size()


def data(rank: int, *shape: int) -> mx.array:
    return mx.array(np.random.default_rng(100 + rank).standard_normal(shape).astype(np.float32))


def weight(rank: int, shape: tuple[int, ...]) -> mx.array:
    return mx.array(np.random.default_rng(900 + rank).standard_normal(shape).astype(np.float32))


def f(y: mx.array, rank: int = 0) -> mx.array:
    return (mx.sin(y) * weight(rank, y.shape)).sum()


def close(what: str, got: mx.array, want: mx.array) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-5), (
        f"{what} on rank {r}:\n{np.array(got)}\n!=\n{np.array(want)}")


def reference(F, xs: list[mx.array]) -> mx.array:  # type: ignore[no-untyped-def]
    """This rank's part of the unsharded gradient."""
    return mx.grad(F)(xs)[r]


def check_grad(what: str, local, F, xs: list[mx.array]) -> None:  # type: ignore[no-untyped-def]
    close(what, mx.grad(local)(xs[r]), reference(F, xs))


# --- through the public API (ringcomm.<op> on an MLX array, the frameworks hook) and the
# module's own entry point, which the drop-in uses.
def hooked(op: str):  # type: ignore[no-untyped-def]
    return getattr(ringcomm, op)


def direct(op: str):  # type: ignore[no-untyped-def]
    return lambda x, *a, **k: autodiff.run(op, x, a, k)


def collectives(via_name: str, via) -> None:  # type: ignore[no-untyped-def]
    # all_sum: the cotangent passes through; the unsharded sum's gradient
    xs = [data(q, 3, 4) for q in range(p)]
    check_grad(f"{via_name} all_sum", lambda a: f(via("all_sum")(a * 3)),
               lambda X: f(sum(x * 3 for x in X)), xs)
    # the user's case from the report: a constant cotangent
    close(f"{via_name} all_sum ones", mx.grad(lambda a: via("all_sum")(a * 3).sum())(mx.ones(3)),
          mx.full((3,), 3.0))
    # all_gather (0-d, as MLX's own test, and rows)
    want = 1.0 if r == 0 else 0.0
    got = mx.grad(lambda a: via("all_gather")(a)[0])(mx.array(1.0)).item()
    assert got == want, f"{via_name} all_gather 0-d: {got} != {want}"
    xs = [data(q, 2, 3) for q in range(p)]
    check_grad(f"{via_name} all_gather", lambda a: f(via("all_gather")(a)),
               lambda X: f(mx.concatenate(X)), xs)
    # sum_scatter: each rank's loss of its rows, summed over ranks
    xs = [data(q, 2 * p, 3) for q in range(p)]
    check_grad(f"{via_name} sum_scatter", lambda a: f(via("sum_scatter")(a), r),
               lambda X: sum(f(sum(X)[2 * q:2 * q + 2], q) for q in range(p)), xs)
    # broadcast from the last rank
    root = p - 1
    xs = [data(q, 5) for q in range(p)]
    check_grad(f"{via_name} broadcast", lambda a: f(via("broadcast")(a, root)),
               lambda X: f(X[root]), xs)
    # all_to_all: block i of rank r's result is block r of rank i's input
    xs = [data(q, 2 * p, 2) for q in range(p)]
    check_grad(f"{via_name} all_to_all", lambda a: f(via("all_to_all")(a), r),
               lambda X: sum(f(mx.concatenate([X[i][2 * q:2 * q + 2] for i in range(p)]), q)
                             for q in range(p)), xs)
    # forward mode: all_sum and all_gather of the tangents
    xs = [data(q, 4) for q in range(p)]
    ts = [data(10 + q, 4) for q in range(p)]
    _, (tan,) = mx.jvp(lambda a: via("all_sum")(a * 2), [xs[r]], [ts[r]])
    close(f"{via_name} all_sum jvp", tan, sum(t * 2 for t in ts))
    _, (tan,) = mx.jvp(lambda a: via("all_gather")(a), [xs[r]], [ts[r]])
    close(f"{via_name} all_gather jvp", tan, mx.concatenate(ts))
    # outside any transform the hook leaves the call to the plain path
    assert autodiff.dispatch("all_sum", xs[r], (), {}) is NotImplemented


collectives("hook", hooked)
collectives("run", direct)

# The ops of the API additions: average, uneven gathers and exchanges.
xs = [data(q, 3) for q in range(p)]
check_grad("all_reduce avg", lambda a: f(ringcomm.all_reduce(a, "avg")),
           lambda X: f(sum(X) / p), xs)
xs = [data(q, q + 1, 2) for q in range(p)]
check_grad("all_gather_v", lambda a: f(ringcomm.all_gather_v(a)),
           lambda X: f(mx.concatenate(X)), xs)
counts = [[(i + j) % 2 + 1 for j in range(p)] for i in range(p)]  # rank i sends counts[i][j] to j
xs = [data(q, sum(counts[q]), 2) for q in range(p)]


def exchanged(X: list[mx.array], q: int) -> mx.array:
    return mx.concatenate([X[i][sum(counts[i][:q]):sum(counts[i][:q + 1])] for i in range(p)])


check_grad("all_to_all_v", lambda a: f(ringcomm.all_to_all_v(a, counts[r]), r),
           lambda X: sum(f(exchanged(X, q), q) for q in range(p)), xs)

# A column-then-row sharded MLP: W1's rows (hidden units) and W2's columns on each rank, one
# all_sum; its gradients are the unsharded MLP's, sliced.
D, H = 6, 4 * p
W1, W2 = weight(1, (H, D)), weight(2, (D, H))
inp, target = data(7, 5, D), data(8, 5, D)
part = slice(r * H // p, (r + 1) * H // p)


def mlp_loss(w1: mx.array, w2: mx.array, sharded: bool) -> mx.array:
    z = mx.maximum(inp @ w1.T, 0) @ w2.T
    y = ringcomm.all_sum(z) if sharded else z
    return ((y - target) ** 2).mean()


loss, (g1, g2) = mx.value_and_grad(lambda a, b: mlp_loss(a, b, True), argnums=(0, 1))(
    W1[part], W2[:, part])
ref_loss, (r1, r2) = mx.value_and_grad(lambda a, b: mlp_loss(a, b, False), argnums=(0, 1))(W1, W2)
close("mlp loss", loss, ref_loss)
close("mlp W1 grad", g1, r1[part])
close("mlp W2 grad", g2, r2[:, part])

# Transforms a host call cannot honour raise, naming them; so does a rule MLX does not define.
x = data(r, 3)
for name, call in (
        ("compile", lambda: mx.compile(lambda a: ringcomm.all_sum(a * 2))(x)),
        ("vmap", lambda: mx.vmap(lambda a: ringcomm.all_sum(a))(mx.ones((2, 3)))),
):
    try:
        call()
    except UnsupportedTransformError as e:
        assert "mx.compile or mx.vmap" in str(e), str(e)
    else:
        raise AssertionError(f"{name}: a collective inside it did not raise")
for name, call, words in (
        ("gather", lambda: mx.grad(lambda a: ringcomm.gather(a).sum())(x), "no gradient rule"),
        ("prod", lambda: mx.grad(lambda a: ringcomm.all_reduce(a, "prod").sum())(x),
         "no gradient rule"),
        ("async", lambda: mx.grad(lambda a: ringcomm.all_sum(a, async_op=True).result().sum())(x),
         "async_op=True"),
):
    try:
        call()
    except UnsupportedTransformError as e:
        assert words in str(e), str(e)
    else:
        raise AssertionError(f"{name}: no error")
# mx.grad of a compiled function: MLX traces the function itself (not the compiled graph) for
# tracer inputs, so the collective is differentiated like any other
close("grad of compile", mx.grad(mx.compile(lambda a: ringcomm.all_sum(a * 2).sum()))(x),
      mx.full((3,), 2.0))
# every rank made the same calls: a last all_sum proves the ranks are still in step
assert ringcomm.all_sum(np.ones(1))[0] == p
print(f"ok mlx_autodiff rank {r}", flush=True)
