"""Compare ringcomm's MPI all_sum with raw mpi4py Allreduce in the same job.

    python benchmarks/mpi_overhead.py            # starts itself under mpirun -n 2
    mpirun -n 2 python benchmarks/mpi_overhead.py

Prints nccl-tests columns (size, count, type, time_us, algbw, busbw) for raw
mpi4py `Allreduce` into a preallocated output and for ringcomm's `all_sum`,
then the time of two references: ringcomm's MPI backend alone into a
preallocated output (`backend`: the MPI path's own cost, without ops.py's
argument handling and result allocation) and raw mpi4py into a fresh output
per call (`+alloc`: what returning a new array costs: its pages are new and
fault on first touch). Overheads: ringcomm over mpi4py, ringcomm over +alloc,
backend over mpi4py. Each size interleaves the methods in many short rounds
and keeps each method's best round, which tames a noisy machine.
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

    fn()  # untimed: the first call after another method's frees pays for them
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
    p.add_argument("--seconds", type=float, default=0.02, help="per method, size and round")
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args(argv)

    if "OMPI_COMM_WORLD_SIZE" not in os.environ and "PMI_SIZE" not in os.environ:
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        return subprocess.run(mpirun_args(args.ranks, argv), env=env, timeout=1800).returncode

    from mpi4py import MPI

    import ringcomm
    from ringcomm.signature import ReduceOp

    group = ringcomm.init(backend="mpi")
    backend = group._backend
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
            # The backend alone, into the preallocated output: the MPI path's own cost.
            "backend": lambda x=x, out=out: backend.all_reduce_into(x, out, ReduceOp.SUM),
            "ringcomm": lambda x=x: ringcomm.all_sum(x, group=group),
            "mpi4py+alloc": lambda x=x: comm.Allreduce(x, np.empty_like(x), op=MPI.SUM),
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
              "busbw = algbw * 2(n-1)/n; overheads are time ratios - 1")
        print(f"{'size':>10} {'count':>9} {'type':>5} | {'mpi4py us':>10} {'algbw':>6} "
              f"{'busbw':>6} | {'ringcomm us':>11} {'algbw':>6} {'busbw':>6} | "
              f"{'backend us':>10} {'+alloc us':>10} | {'ringcomm':>8} {'vs+alloc':>8} "
              f"{'backend':>8}")
        for nbytes, count, t in rows:
            line = f"{nbytes:>10} {count:>9} {'float':>5}"
            for name, width in (("mpi4py", 10), ("ringcomm", 11)):
                algbw = nbytes / t[name] / 1e9
                busbw = algbw * 2 * (n - 1) / n
                line += f" | {t[name] * 1e6:>{width}.1f} {algbw:>6.2f} {busbw:>6.2f}"
            line += f" | {t['backend'] * 1e6:>10.1f} {t['mpi4py+alloc'] * 1e6:>10.1f} |"
            for num, den in (("ringcomm", "mpi4py"), ("ringcomm", "mpi4py+alloc"),
                             ("backend", "mpi4py")):
                line += f" {(t[num] / t[den] - 1) * 100:>7.1f}%"
            print(line, flush=True)
    comm.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
