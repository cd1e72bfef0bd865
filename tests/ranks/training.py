"""In-rank cases for the training and interop tests.

Run inside ranks: ``ringcomm launch -n 2 tests/ranks/training.py CASE [ARG...]``. Each
case asserts on every rank and ends with the line ``ok CASE rank R``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np


def case_counts() -> None:
    """average_gradients: all_sum call counts and averaged values at the real group size."""
    import ringcomm
    import ringcomm.ops

    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    calls = []
    real = ringcomm.ops.all_sum

    def counting(x: Any, *, group: Any = None) -> Any:
        calls.append(np.asarray(x).nbytes)
        return real(x, group=group)

    ringcomm.ops.all_sum = counting
    try:
        grads = [np.full(10, rank + i, dtype=np.float32) for i in range(10)]
        mean_rank = (size - 1) / 2
        for limit, expected in ((32 * 2**20, 1), (200, 2), (0, 10), (-1, 10)):
            calls.clear()
            out = ringcomm.average_gradients(grads, all_reduce_size=limit)
            assert len(calls) == (expected if size > 1 else 0), (limit, calls)
            for i, g in enumerate(out):
                assert g.dtype == np.float32 and g.shape == (10,)
                np.testing.assert_allclose(g, mean_rank + i)
        calls.clear()
        mixed = {"a": np.ones(3, np.float64) * rank, "b": np.ones(4, np.float32) * rank,
                 "c": np.ones(5, np.float64) * rank, "none": None}
        out = ringcomm.average_gradients(mixed)
        assert len(calls) == (2 if size > 1 else 0), calls  # one bucket per dtype
        assert out["none"] is None and out["b"].dtype == np.float32
        np.testing.assert_allclose(out["c"], np.full(5, mean_rank))
    finally:
        ringcomm.ops.all_sum = real
    print(f"ok counts rank {rank}", flush=True)


# The array libraries case_interop exercises, by the name given on its command line: each
# (variant, from NumPy, to NumPy). A library named there that fails to import fails the case.
LIBRARIES = ("torch", "mlx", "jax")


def _library(name: str) -> list[tuple[str, Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]]:
    """Return (variant, from NumPy, to NumPy) for every variant of array library `name`; the
    bfloat16 variants travel through ml_dtypes' bfloat16, so they need it too."""
    import ml_dtypes  # noqa: F401  # not optional here: the bfloat16 variants need it

    if name == "torch":
        import torch

        return [("torch", torch.from_numpy, lambda t: t.float().numpy()),
                ("torch-grad", lambda a: torch.from_numpy(a).requires_grad_() * 1,
                 lambda t: t.detach().float().numpy()),
                ("torch-bf16", lambda a: torch.from_numpy(a).bfloat16(),
                 lambda t: t.float().numpy())]
    if name == "mlx":
        import mlx.core as mx

        return [("mlx", mx.array, lambda x: np.array(x.astype(mx.float32))),
                ("mlx-bf16", lambda a: mx.array(a).astype(mx.bfloat16),
                 lambda x: np.array(x.astype(mx.float32)))]
    if name == "jax":
        import jax.numpy as jnp

        return [("jax", jnp.asarray, lambda x: np.asarray(x, dtype=np.float32)),
                ("jax-bf16", lambda a: jnp.asarray(a, dtype=jnp.bfloat16),
                 lambda x: np.asarray(x, dtype=np.float32))]
    raise SystemExit(f"unknown array library {name!r}; expected some of {LIBRARIES}")


def _check(name: str, x: Any, back: Callable[[Any], np.ndarray], op: str, got: Any,
           want: np.ndarray) -> None:
    assert type(got) is type(x), f"{name} {op}: got {type(got)}"
    assert got.dtype == x.dtype, f"{name} {op}: dtype {got.dtype} != {x.dtype}"
    np.testing.assert_allclose(back(got), want, err_msg=f"{name} {op}")


def case_interop(*names: str) -> list[str]:
    """Every collective on each array library in `names` (default: all of LIBRARIES) returns
    that library's type and the right values. Print and return the variants exercised."""
    import ringcomm

    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    base = np.arange(2 * size * 3, dtype=np.float32).reshape(2 * size, 3)
    mine = base + rank
    exercised = []
    for name, make, back in [v for lib in names or LIBRARIES for v in _library(lib)]:
        x = make(mine.copy())
        check = functools.partial(_check, name, x, back)

        ranks = np.arange(size)
        total = size * base + ranks.sum()
        check("all_sum", ringcomm.all_sum(x), total)
        check("all_max", ringcomm.all_max(x), base + size - 1)
        check("all_min", ringcomm.all_min(x), base)
        check("all_gather", ringcomm.all_gather(x), np.concatenate([base + r for r in ranks]))
        rows = total.shape[0] // size
        check("sum_scatter", ringcomm.sum_scatter(x), total[rank * rows:(rank + 1) * rows])
        check("broadcast", ringcomm.broadcast(x, size - 1), base + size - 1)
        if size > 1:  # a ring: send to the right, receive from the left
            right, left = (rank + 1) % size, (rank - 1) % size
            if rank % 2 == 0:
                ringcomm.send(x, right)
                got = ringcomm.recv_like(x, left)
            else:
                got = ringcomm.recv_like(x, left)
                ringcomm.send(x, right)
            check("send/recv_like", got, base + left)
        grads = {"w": make(mine.copy()), "b": [make(mine[0].copy())]}
        avg = ringcomm.average_gradients(grads)
        check("average_gradients", avg["w"], base + ranks.mean())
        assert type(avg["b"][0]) is type(x)
        exercised.append(name)
    print(f"exercised rank {rank}: {' '.join(exercised)}", flush=True)
    print(f"ok interop rank {rank}", flush=True)
    return exercised


def case_overlap() -> None:
    """torch: GradientReducer (gradients averaged during backward, in buckets small enough that
    every layer's gradient goes alone) trains to the very weights of average_gradients after
    backward (one packed buffer), bit for bit, on every rank; both stay within rounding of one
    process training on the whole batch."""
    import torch

    import ringcomm

    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    torch.set_num_threads(1)  # ranks share the machine's cores
    steps, local = 12, 8
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, size * local, 64, generator=gen)
    y = torch.randint(0, 10, (steps, size * local), generator=gen)
    torch.manual_seed(0)
    init = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Tanh(), torch.nn.Linear(512, 10))

    def train(how: str) -> list[Any]:
        model = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Tanh(),
                                    torch.nn.Linear(512, 10))
        model.load_state_dict(init.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        reducer = ringcomm.GradientReducer(model.parameters(), bucket_bytes=16 << 10) \
            if how == "overlap" else None
        mine = slice(0, size * local) if how == "alone" else slice(rank * local, (rank + 1) * local)
        for s in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[s, mine]), y[s, mine]).backward()
            if reducer is not None:
                reducer.wait()
            elif how == "plain":
                params = list(model.parameters())
                for p, g in zip(params, ringcomm.average_gradients([p.grad for p in params])):
                    p.grad = g
            opt.step()
        if reducer is not None:
            assert len(reducer._buckets) == 4, reducer._buckets  # one per parameter
            reducer.close()
        return [p.detach().clone() for p in model.parameters()]

    plain, overlap, alone = train("plain"), train("overlap"), train("alone")
    for i, (a, b, c) in enumerate(zip(plain, overlap, alone)):
        # The same sums of the same gradients in rank order, then the same division: equal bits.
        assert torch.equal(a, b), f"parameter {i}: overlapped differs by {(a - b).abs().max()}"
        # One process averages over the whole batch at once, the ranks over their shares:
        # the gradients differ in their last bits; after 12 steps the weights (at most ~0.2)
        # differ by ~4e-8, so 1e-6 is tight yet leaves room for other BLAS orders.
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6, msg=f"parameter {i} vs one process")
    flat = torch.cat([p.flatten() for p in overlap]).numpy()
    everyone = ringcomm.all_gather(flat[None])
    assert (everyone == flat).all(), "the ranks' weights differ"
    print(f"ok overlap rank {rank}", flush=True)


if __name__ == "__main__":
    {"counts": case_counts, "interop": case_interop,
     "overlap": case_overlap}[sys.argv[1]](*sys.argv[2:])
