"""Fused `average_gradients` against one `all_sum` per array, on a realistic gradient tree.

    ringcomm launch -n 2 benchmarks/average_gradients.py [--arrays 100] [--largest 4m,64k]
        [--buckets 32m,8m,2m]

Each tree holds `--arrays` float32 gradients whose sizes grow geometrically
from 1 KiB to the largest size: the long tail of small biases and norms plus
a few big matrices that real models have. The fused call saves one round of
per-call latency per array, so its gain is large when latency dominates (many
small arrays) and bounded by (bytes/bandwidth + arrays*latency) /
(bytes/bandwidth) when bandwidth dominates. Both methods produce the same
averages (checked); rank 0 prints the median of each iteration's slowest
rank, the number of all_sum calls, the algorithm bandwidth (tree bytes /
time) and the speed-up of the fused call. `--buckets` times the fused call
with each `all_reduce_size`, interleaved with the rest, to choose the default.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import ringcomm
import ringcomm.ops


def gradient_tree(n: int, smallest: int = 1 << 10, largest: int = 4 << 20) -> list[np.ndarray]:
    """Return `n` float32 arrays from `smallest` to `largest` bytes, geometrically spaced."""
    sizes = np.geomspace(smallest, largest, n).astype(np.int64) // 4
    rng = np.random.default_rng(0)
    return [rng.standard_normal(int(s)).astype(np.float32) for s in sizes]


def per_array_loop(grads: list[np.ndarray]) -> list[np.ndarray]:
    """Average every array with its own all_sum: the unfused baseline."""
    size = ringcomm.init().size()
    return [ringcomm.ops.all_sum(g) / size for g in grads]


def count_calls(fn: Callable[[], object]) -> int:
    """Return how many all_sum calls one run of `fn` makes."""
    calls = []
    real = ringcomm.ops.all_sum

    def counting(x, *, group=None):
        calls.append(1)
        return real(x, group=group)

    ringcomm.ops.all_sum = counting
    try:
        fn()
    finally:
        ringcomm.ops.all_sum = real
    return len(calls)


def timed(fns: list[Callable[[], object]], iters: int) -> list[float]:
    """Return each function's median seconds (slowest rank per iteration), runs interleaved.

    Interleaving puts both methods under the same background load, which on
    a shared machine moves more than either method does.
    """
    times = np.zeros((iters, len(fns)))
    for i in range(iters):
        for j, fn in enumerate(fns):
            ringcomm.barrier()
            t = time.perf_counter()
            fn()
            times[i, j] = time.perf_counter() - t
    worst = ringcomm.all_max(times)
    return [float(t) for t in np.median(worst, axis=0)]


def _bytes(text: str) -> int:
    unit = {"k": 1 << 10, "m": 1 << 20}.get(text[-1].lower(), 1)
    return int(float(text.rstrip("kKmM")) * unit)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arrays", type=int, default=100)
    p.add_argument("--largest", default="4m,64k", help="largest array of each tree, k/m suffix")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--buckets", default="", help="also time these all_reduce_size values, "
                   "k/m suffix (default: only the library's default)")
    args = p.parse_args()
    buckets = [_bytes(b) for b in args.buckets.split(",") if b]
    world = ringcomm.init()
    for largest in args.largest.split(","):
        nbytes = _bytes(largest)
        grads = gradient_tree(args.arrays, largest=nbytes)
        total = sum(g.nbytes for g in grads)
        for a, b in zip(ringcomm.average_gradients(grads), per_array_loop(grads)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        methods = [lambda g=grads: ringcomm.average_gradients(g), lambda g=grads: per_array_loop(g)]
        names = ["average_gradients", "all_sum per array"]
        for b in buckets:
            methods.append(lambda g=grads, b=b: ringcomm.average_gradients(g, all_reduce_size=b))
            names.append(f"bucket {b / 2**20:g} MiB")
        calls = [count_calls(m) for m in methods]
        times = timed(methods, args.iters)
        if world.rank() == 0:
            print(f"tree: {len(grads)} float32 arrays, 1 KiB to {nbytes / 1024:.0f} KiB, "
                  f"{total / 2**20:.2f} MiB; {world.size()} ranks ({world.backend}); "
                  f"median of {args.iters}")
            print(f"{'method':>20} {'all_sums':>9} {'time_ms':>9} {'algbw_GB/s':>11}")
            for name, t, n in zip(names, times, calls):
                print(f"{name:>20} {n:9d} {t * 1e3:9.2f} {total / t / 1e9:11.3f}")
            print(f"speed-up of the fused call: {times[1] / times[0]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
