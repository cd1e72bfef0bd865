"""In-rank cases of JAX collectives: ``ringcomm launch -n N autodiff_jax.py CASE``. Every rank
builds every rank's inputs from seeds and computes the unsharded computation alone. Ends with
``ok CASE rank R``.

JAX's rules (shard_map, check_vma=True): all_sum's and all_reduce's results are replicated
(the loss computed from them counts once); every other collective's result is per rank (the
objective is the sum of every rank's loss).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import ringcomm
from ringcomm.jax import collectives as rj

jax.config.update("jax_enable_x64", True)
Array = jax.Array


def seeded(seed: int, *shape: int) -> Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def offsets(counts: list[int]) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


class Case:
    """One collective: this rank's call, the unsharded reference (every rank's inputs in, every
    rank's outputs out), each rank's input shape, and whether its result is replicated."""

    def __init__(self, name: str, call: Callable[[Array], Array],
                 ref: Callable[[list[Array]], list[Array]], shape: Callable[[int], tuple[int, ...]],
                 replicated: bool = False, linear: bool = True) -> None:
        self.name, self.call, self.ref, self.shape = name, call, ref, shape
        self.replicated, self.linear = replicated, linear


def cases(p: int, r: int) -> list[Case]:
    def blocks(t: Array, q: int) -> Array:
        n = t.shape[0] // p
        return t[q * n:(q + 1) * n]

    total = lambda xs: sum(xs[1:], xs[0])  # noqa: E731
    a2av = [[(i + j) % 2 + 1 for j in range(p)] for i in range(p)]
    recv = [a2av[i][r] for i in range(p)]
    vcounts = [q + 1 for q in range(p)]
    root = p - 1
    shift = [(q, (q + 1) % p) for q in range(p)]

    def a2av_ref(xs: list[Array]) -> list[Array]:
        return [jnp.concatenate([xs[i][offsets(a2av[i])[q]:offsets(a2av[i])[q + 1]]
                                 for i in range(p)]) for q in range(p)]

    return [
        Case("all_sum", ringcomm.all_sum, lambda xs: [total(xs)] * p, lambda q: (3, 2), True),
        Case("all_reduce avg", lambda x: ringcomm.all_reduce(x, "avg"),
             lambda xs: [total(xs) / p] * p, lambda q: (4,), True),
        Case("all_gather", ringcomm.all_gather, lambda xs: [jnp.concatenate(xs)] * p,
             lambda q: (2, 2)),
        Case("all_gather 0-d", ringcomm.all_gather, lambda xs: [jnp.stack(xs)] * p, lambda q: ()),
        Case("all_gather_v", lambda x: ringcomm.all_gather_v(x, vcounts),
             lambda xs: [jnp.concatenate(xs)] * p, lambda q: (q + 1, 2)),
        Case("sum_scatter", ringcomm.sum_scatter,
             lambda xs: [blocks(total(xs), q) for q in range(p)], lambda q: (2 * p, 3)),
        Case("reduce_scatter avg", lambda x: ringcomm.reduce_scatter(x, "avg"),
             lambda xs: [blocks(total(xs) / p, q) for q in range(p)], lambda q: (p, 2)),
        Case("reduce_scatter_v", lambda x: ringcomm.reduce_scatter_v(x, vcounts),
             lambda xs: [total(xs)[offsets(vcounts)[q]:offsets(vcounts)[q + 1]]
                         for q in range(p)], lambda q: (sum(vcounts), 2)),
        Case("broadcast", lambda x: ringcomm.broadcast(x, root), lambda xs: [xs[root]] * p,
             lambda q: (3,)),
        Case("all_to_all", ringcomm.all_to_all,
             lambda xs: [jnp.concatenate([blocks(x, q) for x in xs]) for q in range(p)],
             lambda q: (2 * p, 2)),
        Case("all_to_all_v", lambda x: ringcomm.all_to_all_v(x, a2av[r], recv), a2av_ref,
             lambda q: (sum(a2av[q]), 2)),
        Case("gather", lambda x: ringcomm.gather(x, 0),
             lambda xs: [jnp.concatenate(xs)] + [jnp.zeros((0, 2))] * (p - 1), lambda q: (2, 2)),
        Case("scatter", lambda x: ringcomm.scatter(x, root),
             lambda xs: [blocks(xs[root], q) for q in range(p)], lambda q: (p, 2)),
        Case("ppermute", lambda x: rj.ppermute(x, shift),
             lambda xs: [xs[(q - 1) % p] for q in range(p)], lambda q: (2, 3)),
        Case("all_max", ringcomm.all_max, lambda xs: [jnp.stack(xs).max(0)] * p,
             lambda q: (5,), linear=False),
        Case("all_reduce prod", lambda x: ringcomm.all_reduce(x, "prod"),
             lambda xs: [jnp.stack(xs).prod(0)] * p, lambda q: (5,), linear=False),
    ]


def loss_of(out: Array, q: int) -> Array:
    """Rank q's loss: different weights on every rank, and not linear."""
    w = seeded(1000 + q, *out.shape)
    return (w * out).sum() + 0.1 * (out ** 2).sum()


def check_case(c: Case, p: int, r: int) -> None:
    xs = [seeded(100 * (q + 1) + len(c.name), *c.shape(q)) for q in range(p)]
    x = xs[r]
    refs = c.ref(xs)
    eager = c.call(x)
    np.testing.assert_allclose(eager, refs[r], err_msg=c.name)
    jitted = jax.jit(c.call)(x)
    np.testing.assert_array_equal(jitted, eager, err_msg=f"{c.name} jit")
    if not c.linear:
        try:
            jax.grad(lambda t: loss_of(c.call(t), r))(x)
        except ValueError as e:
            assert c.name.split()[0] in str(e) and "stop_gradient" in str(e), (c.name, e)
        else:
            raise AssertionError(f"{c.name}: grad did not raise")
        return
    # the objective: one replicated loss (psum's rule), or every rank's loss summed
    if c.replicated:
        def objective(ins: list[Array]) -> Array:
            return loss_of(c.ref(ins)[0], 0)

        def mine(t: Array) -> Array:
            return loss_of(c.call(t), 0)
    else:
        def objective(ins: list[Array]) -> Array:
            return sum(loss_of(o, q) for q, o in enumerate(c.ref(ins)))  # type: ignore[return-value]

        def mine(t: Array) -> Array:
            return loss_of(c.call(t), r)
    want = jax.grad(objective)(xs)[r]
    ways = [("grad", jax.grad(mine)), ("grad of jit", jax.grad(jax.jit(mine))),
            ("vjp", lambda t: jax.vjp(mine, t)[1](jnp.ones(()))[0])]
    # every jit compiles: the other orders of composition for a few cases only
    thorough = c.name in ("all_sum", "all_gather", "reduce_scatter_v", "ppermute")
    if thorough:
        ways.append(("jit of grad", jax.jit(jax.grad(mine))))
    for how, fn in ways:
        np.testing.assert_allclose(fn(x), want, rtol=1e-12, atol=1e-12, err_msg=f"{c.name} {how}")
    ts = [seeded(7 + q, *c.shape(q)) for q in range(p)]
    _, tangent = jax.jvp(c.call, (x,), (ts[r],))
    np.testing.assert_allclose(tangent, c.ref(ts)[r], err_msg=f"{c.name} jvp")
    if thorough:
        _, tangent = jax.jit(lambda a, b: jax.jvp(c.call, (a,), (b,)))(x, ts[r])
        np.testing.assert_allclose(tangent, c.ref(ts)[r], err_msg=f"{c.name} jvp in jit")


def check_plain_and_order(p: int, r: int) -> None:
    x = seeded(5, 3)
    assert rj.dispatch("all_sum", x, (), {}) is NotImplemented
    np.testing.assert_allclose(ringcomm.all_sum(x), x * p)

    @jax.jit
    def several(a: Array) -> tuple[Array, Array, Array]:
        # three collectives of one shape in one program: an order the compiler kept
        b = ringcomm.all_sum(a * (r + 1))
        c = ringcomm.all_gather(a + r)
        d = ringcomm.all_sum(a * 0 + r)
        return b, c, d

    for _ in range(3):
        b, c, d = several(x)
        # a NumPy call right after the jitted ones: it must not overtake them
        e = ringcomm.all_sum(np.full(3, float(r)))
        np.testing.assert_allclose(b, x * p * (p + 1) / 2)
        np.testing.assert_allclose(c, jnp.concatenate([x + q for q in range(p)]))
        np.testing.assert_allclose(d, np.full(3, p * (p - 1) / 2))
        np.testing.assert_allclose(e, np.full(3, p * (p - 1) / 2))


def check_refusals(p: int, r: int) -> None:
    from jax.sharding import PartitionSpec as P

    x = seeded(9, 4, 2)
    mesh = jax.make_mesh((1,), ("i",))
    for name, fn in (("jax.vmap", jax.vmap(ringcomm.all_sum)),
                     ("jax.vmap", jax.jit(jax.vmap(lambda t: ringcomm.all_gather(t)))),
                     ("jax.pmap", jax.pmap(ringcomm.all_sum)),
                     ("jax.shard_map", jax.shard_map(ringcomm.all_sum, mesh=mesh, in_specs=P(),
                                                     out_specs=P()))):
        try:
            fn(x[:1] if name == "jax.pmap" else x)
        except ValueError as e:
            assert name in str(e), (name, e)
        else:
            raise AssertionError(f"{name} over a collective did not raise")
    try:
        jax.jit(lambda t: ringcomm.all_gather_v(t))(x)
    except ValueError as e:
        assert "counts" in str(e), e
    else:
        raise AssertionError("all_gather_v without counts under jit did not raise")


def check_mlp(p: int, r: int) -> None:
    """Column-then-row tensor parallel MLP: its gradients equal the unsharded MLP's."""
    d, h, o, n = 5, 4 * p, 3, 6
    x0, w1, w2, target = seeded(1, n, d), seeded(2, d, h), seeded(3, h, o), seeded(4, n, o)
    cols = slice(r * h // p, (r + 1) * h // p)

    def loss(y: Array) -> Array:
        return ((y - target) ** 2).mean()

    def unsharded(x: Array, a: Array, b: Array) -> Array:
        return loss(jax.nn.relu(x @ a) @ b)

    def sharded(x: Array, a: Array, b: Array) -> Array:
        # pvary: the replicated input feeds each rank's part (its transpose sums over ranks);
        # all_sum joins the parts into the replicated output (its transpose is the identity)
        return loss(ringcomm.all_sum(jax.nn.relu(rj.pvary(x) @ a) @ b))

    want = jax.grad(unsharded, argnums=(0, 1, 2))(x0, w1, w2)
    for fn in (sharded, jax.jit(sharded)):
        value, (gx, g1, g2) = jax.value_and_grad(fn, argnums=(0, 1, 2))(x0, w1[:, cols], w2[cols])
        np.testing.assert_allclose(value, unsharded(x0, w1, w2), rtol=1e-12)
        np.testing.assert_allclose(gx, want[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g1, want[1][:, cols], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g2, want[2][cols], rtol=1e-10, atol=1e-12)


def main() -> None:
    world = ringcomm.init()
    p, r = world.size(), world.rank()
    case = sys.argv[1]
    for c in cases(p, r):
        check_case(c, p, r)
    check_plain_and_order(p, r)
    check_refusals(p, r)
    check_mlp(p, r)
    print(f"ok {case} rank {r}", flush=True)


if __name__ == "__main__":
    main()
