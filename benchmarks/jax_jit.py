"""What the framework layer costs: a jitted JAX all_sum against the eager call, and the torch
autograd path against a plain tensor.

    flock /tmp/ringcomm-bench.lock python benchmarks/jax_jit.py            # p=2 and p=4
    flock /tmp/ringcomm-bench.lock python benchmarks/jax_jit.py -n 2 --sizes 4,16k,1m

Starts itself under ``ringcomm launch -n N`` for every N. On each rank, for every size (float32),
it times ringcomm.all_sum on: a NumPy array (ringcomm's own path, for reference); a concrete JAX
array (eager: the plain path, wrapped back into JAX); `jax.jit(ringcomm.all_sum)` (a compiled
program whose host callback runs the collective, with JAX's ordered effect); JAX's floor for
that: a jitted program with one ordered `io_callback` that does nothing; a torch tensor; a
torch tensor that requires grad (the autograd Function: forward only, building the graph); and
forward plus backward of that (two all_sums, torch.autograd.grad). Every result is checked
once. The methods run interleaved in short rounds, each preceded by a barrier, and each keeps
its best round (rank 0's time per call), which tames a noisy machine. Ratios: jit / eager, grad / plain.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def parse_size(text: str) -> int:
    """Return a byte count from '4', '16k', '1m'."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def methods(n: int, p: int) -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Every method as (one call, its result's check)."""
    import jax
    import torch
    from jax.experimental import io_callback

    import ringcomm

    a = np.ones(n, np.float32)
    jx = jax.numpy.ones(n, jax.numpy.float32)
    jitted = jax.jit(ringcomm.all_sum)
    # JAX's own floor: a jitted program whose one ordered host callback does nothing
    floor = jax.jit(lambda t: io_callback(lambda v: v, jax.ShapeDtypeStruct(t.shape, t.dtype), t,
                                          ordered=True))
    plain = torch.ones(n)
    leaf = torch.ones(n, requires_grad=True)
    want = np.full(n, float(p), np.float32)

    def backward() -> Any:  # torch.autograd.grad: no accumulation into .grad, only the calls
        return torch.autograd.grad(ringcomm.all_sum(leaf), leaf, plain)[0]

    def close(expect: np.ndarray) -> Callable[[Callable[[], Any]], None]:
        def check(call: Callable[[], Any]) -> None:
            got = call()
            got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
            np.testing.assert_allclose(got, expect)
        return check

    return {
        "numpy": (lambda: ringcomm.all_sum(a), close(want)),
        "jax eager": (lambda: ringcomm.all_sum(jx).block_until_ready(), close(want)),
        "jax jit": (lambda: jitted(jx).block_until_ready(), close(want)),
        "jit callback": (lambda: floor(jx).block_until_ready(), close(np.ones(n, np.float32))),
        "torch plain": (lambda: ringcomm.all_sum(plain), close(want)),
        "torch grad": (lambda: ringcomm.all_sum(leaf), close(want)),
        "torch fwd+bwd": (backward, close(want)),
    }


def best(call: Callable[[], Any], iters: int, rounds: list[float]) -> None:
    import ringcomm

    ringcomm.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    rounds.append((time.perf_counter() - start) / iters)


def rank_main(args: argparse.Namespace) -> None:
    import ringcomm

    world = ringcomm.init()
    p, rank = world.size(), world.rank()
    rows = []
    for size in args.sizes:
        n = max(1, size // 4)
        table = methods(n, p)
        for call, check in table.values():
            check(call)
            for _ in range(3):
                call()
        iters = max(5, min(200, int(2e8 / size) // 50))
        times: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(args.rounds):
            for name, (call, _check) in table.items():
                best(call, iters, times[name])
        rows.append((size, {name: min(t) * 1e6 for name, t in times.items()}))
    if rank == 0:
        names = list(rows[0][1])
        print(f"# ringcomm all_sum through the frameworks, p={p}, float32; time_us is rank 0's "
              "best round")
        print(f"{'size_B':>9} " + " ".join(f"{name:>13}" for name in names)
              + f" {'jit/eager':>10} {'grad/plain':>10}")
        for size, t in rows:
            print(f"{size:>9} " + " ".join(f"{t[name]:>13.1f}" for name in names)
                  + f" {t['jax jit'] / t['jax eager']:>10.2f}"
                  + f" {t['torch grad'] / t['torch plain']:>10.2f}", flush=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--ranks", default="2,4", help="rank counts, comma-separated")
    ap.add_argument("--sizes", default="4,16k,1m", help="bytes per rank, comma-separated")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    if "RINGCOMM_RANK" in os.environ:
        rank_main(args)
        return 0
    for n in (int(r) for r in args.ranks.split(",")):
        cmd = [sys.executable, "-m", "ringcomm", "launch", "-n", str(n), sys.executable,
               __file__, *argv]
        code = subprocess.run(cmd, timeout=1800).returncode
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
