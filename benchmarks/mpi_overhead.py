"""Compare ringcomm's MPI all_sum with raw mpi4py Allreduce in the same job.

    python benchmarks/mpi_overhead.py            # starts itself under mpirun -n 2
    mpirun -n 2 python benchmarks/mpi_overhead.py

Prints nccl-tests columns (size, count, type, time_us, algbw, busbw) for raw
mpi4py into a preallocated output, raw mpi4py into a fresh output per call
(what returning a new array costs), and ringcomm, then ringcomm's overhead
over each. Each size alternates the methods for several rounds and keeps each
method's best round, which tames a noisy machine.

glibc serves a fresh allocation above its mmap threshold (128 KiB at start)
with new pages, and each page faults on first touch; freeing such a block
raises the threshold to its size (up to 32 MiB). A long-running program is
past that warm-up, so the benchmark first allocates and frees 32 MiB;
`--cold` skips it, and then every size is the largest seen so far and each
fresh output pays its page faults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def parse_size(text: str) -> int:
    """Return a byte count from '4', '64K', '1M' or '2G'."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def mpirun_args(n: int, argv: list[str]) -> list[str]:
    """Return the command line that reruns this script on n ranks of this host."""
    local = Path(sys.executable).parent / "mpirun"
    mpirun = str(local) if local.exists() else "mpirun"
    return [mpirun, "-n", str(n), "--oversubscribe", "--bind-to", "none",
            sys.executable, __file__, *argv]


def batch(fn, comm, iters: int) -> float:  # type: ignore[no-untyped-def]
    """Return the mean seconds per call of `iters` calls of `fn`, the slowest rank's."""
    from mpi4py import MPI

    comm.Barrier()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return comm.allreduce(time.perf_counter() - start, op=MPI.MAX) / iters


def calibrate(fn, comm, seconds: float) -> int:  # type: ignore[no-untyped-def]
    """Return how many calls of `fn` take about `seconds` (every rank gets the same number)."""
    fn()
    one = min(batch(fn, comm, 1) for _ in range(3))
    return max(1, min(10000, int(seconds / max(one, 1e-7))))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-b", "--minbytes", default="4")
    p.add_argument("-e", "--maxbytes", default="64M")
    p.add_argument("-f", "--stepfactor", type=int, default=4)
    p.add_argument("-n", "--ranks", type=int, default=2, help="ranks when starting mpirun")
    p.add_argument("--seconds", type=float, default=0.005, help="per method, size and round")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--cold", action="store_true", help="skip the allocator warm-up")
    args = p.parse_args(argv)

    if "OMPI_COMM_WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        return subprocess.run(mpirun_args(args.ranks, argv), env=env, timeout=1800).returncode

    from mpi4py import MPI

    import ringcomm

    if not args.cold:
        del_me = np.empty(32 << 20, dtype=np.uint8)
        del del_me
    group = ringcomm.init(backend="mpi")
    comm = MPI.COMM_WORLD.Dup()
    n = comm.Get_size()
    rows = []
    size = parse_size(args.minbytes)
    while size <= parse_size(args.maxbytes):
        count = max(1, size // 4)
        x = np.ones(count, dtype=np.float32)
        out = np.empty_like(x)
        methods = {
            "mpi4py": lambda x=x, out=out: comm.Allreduce(x, out, op=MPI.SUM),
            "mpi4py+alloc": lambda x=x: comm.Allreduce(x, np.empty_like(x), op=MPI.SUM),
            "ringcomm": lambda x=x: ringcomm.all_sum(x, group=group),
        }
        iters = {name: calibrate(fn, comm, args.seconds) for name, fn in methods.items()}
        best = {name: float("inf") for name in methods}
        for _ in range(args.rounds):  # interleaved, so a burst of load hits every method
            for name, fn in methods.items():
                best[name] = min(best[name], batch(fn, comm, iters[name]))
        rows.append((count * 4, count, best))
        size *= args.stepfactor
    if group.rank() == 0:
        print(f"# all_sum float32, {n} ranks, best of {args.rounds} rounds; "
              "busbw = algbw * 2(n-1)/n; overhead = ringcomm / mpi4py - 1, "
              "then over mpi4py+alloc")
        head = f"{'size':>10} {'count':>10} {'type':>7}"
        for name in best:
            head += f" | {name + ' us':>15} {'algbw':>6} {'busbw':>6}"
        print(head + f" | {'overhead':>8} {'vs alloc':>8}")
        for nbytes, count, best in rows:
            line = f"{nbytes:>10} {count:>10} {'float':>7}"
            for t in best.values():
                algbw = nbytes / t / 1e9
                line += f" | {t * 1e6:>15.1f} {algbw:>6.2f} {algbw * 2 * (n - 1) / n:>6.2f}"
            over = best["ringcomm"] / best["mpi4py"] - 1
            fair = best["ringcomm"] / best["mpi4py+alloc"] - 1
            print(line + f" | {over * 100:>7.1f}% {fair * 100:>7.1f}%", flush=True)
    comm.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
