"""In-rank cases of differentiable torch collectives: ``ringcomm launch -n N autodiff_torch.py
CASE``. Every rank builds every rank's inputs from seeds, so it can compute the unsharded
computation alone and compare its own gradient with it. Ends with ``ok CASE rank R``.

torch's rule (torch.distributed.nn.functional): the objective is the sum of every rank's loss.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

import ringcomm
from ringcomm.torch import autograd as rt

Tensor = torch.Tensor
F64 = torch.float64


def seeded(seed: int, *shape: int) -> Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=F64)


def offsets(counts: list[int]) -> list[int]:
    out = [0]
    for c in counts:
        out.append(out[-1] + c)
    return out


class Case:
    """One collective: this rank's call, the unsharded reference (every rank's inputs in, every
    rank's outputs out), and each rank's input shape."""

    def __init__(self, name: str, call: Callable[[Tensor], Tensor],
                 ref: Callable[[list[Tensor]], list[Tensor]], shape: Callable[[int], tuple[int, ...]],
                 linear: bool = True) -> None:
        self.name, self.call, self.ref, self.shape, self.linear = name, call, ref, shape, linear


def cases(p: int, r: int) -> list[Case]:
    def blocks(t: Tensor, q: int) -> Tensor:
        n = t.shape[0] // p
        return t[q * n:(q + 1) * n]

    total = lambda xs: sum(xs[1:], xs[0])  # noqa: E731
    a2av = [[(i + j) % 2 + 1 for j in range(p)] for i in range(p)]  # rows i sends to j
    vcounts = [q + 1 for q in range(p)]
    root = p - 1

    def a2av_ref(xs: list[Tensor]) -> list[Tensor]:
        return [torch.cat([xs[i][offsets(a2av[i])[q]:offsets(a2av[i])[q + 1]] for i in range(p)])
                for q in range(p)]

    return [
        Case("all_sum", ringcomm.all_sum, lambda xs: [total(xs)] * p, lambda q: (3, 2)),
        Case("all_reduce sum", lambda x: ringcomm.all_reduce(x, "sum"),
             lambda xs: [total(xs)] * p, lambda q: (2, 3)),
        Case("all_reduce avg", lambda x: ringcomm.all_reduce(x, ringcomm.ReduceOp.AVG),
             lambda xs: [total(xs) / p] * p, lambda q: (4,)),
        Case("all_gather", ringcomm.all_gather, lambda xs: [torch.cat(xs)] * p, lambda q: (2, 2)),
        Case("all_gather 0-d", ringcomm.all_gather, lambda xs: [torch.stack(xs)] * p, lambda q: ()),
        Case("all_gather_v", lambda x: ringcomm.all_gather_v(x), lambda xs: [torch.cat(xs)] * p,
             lambda q: (q + 1, 2)),
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
             lambda xs: [torch.cat([blocks(x, q) for x in xs]) for q in range(p)],
             lambda q: (2 * p, 2)),
        Case("all_to_all_v", lambda x: ringcomm.all_to_all_v(x, a2av[r]), a2av_ref,
             lambda q: (sum(a2av[q]), 2)),
        Case("gather", lambda x: ringcomm.gather(x, 0),
             lambda xs: [torch.cat(xs)] + [xs[0][:0].new_zeros((0, 2))] * (p - 1),
             lambda q: (2, 2)),
        Case("scatter", lambda x: ringcomm.scatter(x, root),
             lambda xs: [blocks(xs[root], q) for q in range(p)], lambda q: (p, 2)),
        Case("all_max", ringcomm.all_max, lambda xs: [torch.stack(xs).amax(0)] * p,
             lambda q: (5,), linear=False),
        Case("all_min", ringcomm.all_min, lambda xs: [torch.stack(xs).amin(0)] * p,
             lambda q: (5,), linear=False),
        Case("all_reduce prod", lambda x: ringcomm.all_reduce(x, "prod"),
             lambda xs: [torch.stack(xs).prod(0)] * p, lambda q: (5,), linear=False),
    ]


def loss_of(out: Tensor, q: int) -> Tensor:
    """Rank q's loss: different weights on every rank, and not linear."""
    w = seeded(1000 + q, *out.shape)
    return (w * out).sum() + 0.1 * (out ** 2).sum()


def check_case(c: Case, p: int, r: int) -> None:
    xs = [seeded(100 * (q + 1) + len(c.name), *c.shape(q)) for q in range(p)]
    leaves = [x.clone().requires_grad_(True) for x in xs]
    refs = c.ref(leaves)
    x = xs[r].clone().requires_grad_(True)
    out = c.call(x)
    torch.testing.assert_close(out.detach(), refs[r].detach(), msg=c.name)
    if not c.linear:
        assert out.requires_grad, c.name
        try:
            loss_of(out, r).backward()
        except RuntimeError as e:
            assert c.name.split()[0] in str(e) and "detach" in str(e), (c.name, e)
        else:
            raise AssertionError(f"{c.name}: backward did not raise")
        return
    # autograd: the gradient of the sum of every rank's loss
    total = sum(loss_of(o, q) for q, o in enumerate(refs))
    want = torch.autograd.grad(total, leaves[r], allow_unused=True)[0]
    if want is None:  # this rank's input does not reach any output (broadcast, scatter)
        want = torch.zeros_like(xs[r])
    loss_of(out, r).backward()
    torch.testing.assert_close(x.grad, want, msg=c.name)
    # torch.func.grad agrees
    got = torch.func.grad(lambda t: loss_of(c.call(t), r))(xs[r])
    torch.testing.assert_close(got, want, msg=f"{c.name} torch.func.grad")
    # forward mode: the tangent goes through the same collective
    ts = [seeded(7 + q, *c.shape(q)) for q in range(p)]
    _, tangent = torch.func.jvp(c.call, (xs[r],), (ts[r],))
    torch.testing.assert_close(tangent, c.ref(ts)[r], msg=f"{c.name} jvp")
    # double backward: a backward collective is differentiable in turn
    if c.name == "all_gather":
        y = xs[r].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(c.call(y), r), y, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), y)
        # d/dy of sum(grad) = 0.2 * p (the quadratic term, summed over ranks) everywhere
        torch.testing.assert_close(gg, torch.full_like(y, 0.2 * p), msg="double backward")


def check_plain(p: int, r: int) -> None:
    plain = seeded(5, 3)
    out = ringcomm.all_sum(plain)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, plain * p)
    assert rt.dispatch("all_sum", plain, (), {}) is NotImplemented
    with torch.no_grad():  # nothing to differentiate: the plain path
        w = seeded(6, 3).requires_grad_(True)
        assert rt.dispatch("all_sum", w, (), {}) is NotImplemented
    # the public functions are the same collectives
    x = seeded(8, 2).requires_grad_(True)
    rt.all_reduce(x, "avg").sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(2, dtype=F64))


def check_refusals(p: int, r: int) -> None:
    x = seeded(9, 4, 2)
    try:
        torch.func.vmap(ringcomm.all_sum)(x)
    except RuntimeError as e:
        assert "torch.func.vmap" in str(e) and "all_sum" in str(e), e
    else:
        raise AssertionError("vmap over all_sum did not raise")
    try:
        ringcomm.all_sum(x.clone().requires_grad_(True), async_op=True)
    except ValueError as e:
        assert "async_op" in str(e), e
    else:
        raise AssertionError("async_op on a tensor that requires grad did not raise")


def check_mlp(p: int, r: int) -> None:
    """Column-then-row tensor parallel MLP: its gradients equal the unsharded MLP's."""
    d, h, o, n = 5, 4 * p, 3, 6
    x0, w1, w2, target = seeded(1, n, d), seeded(2, d, h), seeded(3, h, o), seeded(4, n, o)
    cols = slice(r * h // p, (r + 1) * h // p)

    def loss(y: Tensor) -> Tensor:
        return ((y - target) ** 2).mean()

    # unsharded
    xr, w1r, w2r = (t.clone().requires_grad_(True) for t in (x0, w1, w2))
    ref = loss(torch.relu(xr @ w1r) @ w2r)
    ref.backward()
    # sharded: broadcast brings the input in (its backward sums the ranks' parts on root),
    # all_sum joins the row-parallel parts (its backward sums the gradient over ranks, so a
    # loss that every rank computes alike counts p times: divide it by p)
    xs = x0.clone().requires_grad_(True)
    w1s = w1[:, cols].clone().requires_grad_(True)
    w2s = w2[cols].clone().requires_grad_(True)
    y = ringcomm.all_sum(torch.relu(ringcomm.broadcast(xs, 0) @ w1s) @ w2s)
    value = loss(y)
    torch.testing.assert_close(value, ref.detach())
    (value / p).backward()
    torch.testing.assert_close(w1s.grad, w1r.grad[:, cols])
    torch.testing.assert_close(w2s.grad, w2r.grad[cols])
    if r == 0:
        torch.testing.assert_close(xs.grad, xr.grad)
    else:
        torch.testing.assert_close(xs.grad, torch.zeros_like(xs))


def check_compile(p: int, r: int) -> None:
    """torch.compile breaks its graph around the collective and gives the eager result."""
    import torch._dynamo

    torch._dynamo.reset()

    def f(x: Tensor) -> Tensor:
        y = torch.sin(x) * 2
        z = ringcomm.all_sum(y) + ringcomm.all_gather(y * y).sum()
        return (z * 3).sum()

    compiled = torch.compile(f, fullgraph=False, backend="aot_eager")
    x = seeded(20 + r, 6)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = f(xe), compiled(xc)
    torch.testing.assert_close(yc, ye)
    ye.backward()
    yc.backward()
    torch.testing.assert_close(xc.grad, xe.grad)
    plain = compiled(x)  # no grad: the plain path under compile
    torch.testing.assert_close(plain, ye.detach())


def main() -> None:
    world = ringcomm.init()
    p, r = world.size(), world.rank()
    case = sys.argv[1]  # "grads", or "compile": the same and torch.compile
    for c in cases(p, r):
        check_case(c, p, r)
    check_plain(p, r)
    check_refusals(p, r)
    check_mlp(p, r)
    if case == "compile":
        check_compile(p, r)
    print(f"ok {case} rank {r}", flush=True)


if __name__ == "__main__":
    main()
