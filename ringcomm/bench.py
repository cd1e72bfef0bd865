"""`ringcomm bench`: collective bandwidth and latency, in nccl-tests columns.

Run from a shell it starts itself on `-n` local ranks through `ringcomm
launch`; run inside a launched job it measures. Rank 0 prints one line per
size: size, count, dtype, time_us (rank 0's median, as the peer benchmarks
report theirs), algbw and busbw in GB/s, where busbw = algbw * 2(n-1)/n for
all_sum (the bytes each link carries). Every result is checked, so a fast
wrong answer fails the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

from . import environment

__all__ = ["main", "measure"]

_DEFAULT_SIZES = "4,4096,65536,1048576,16777216,67108864"


def _parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def measure(op: str, nbytes: int, dtype: np.dtype, iters: int | None = None) -> dict:
    """Return median time and bandwidths of `op` on `nbytes`, after checking its result."""
    import ringcomm

    world = ringcomm.init()
    p, r = world.size(), world.rank()
    count = max(1, nbytes // dtype.itemsize)
    x = np.full(count, r + 1, dtype=dtype)
    fn = {"all_sum": ringcomm.all_sum, "all_gather": ringcomm.all_gather,
          "broadcast": ringcomm.broadcast}[op]
    if iters is None:
        iters = max(5, min(200, int(2e8 // max(nbytes, 1))))
    for _ in range(3):
        y = fn(x)
    expected = {"all_sum": p * (p + 1) // 2, "broadcast": 1}.get(op)
    if expected is not None and not (y == expected).all():
        raise AssertionError(f"{op} on {nbytes} bytes gave {y[:4]}, expected {expected}")
    times = []
    for _ in range(iters):
        ringcomm.barrier() if nbytes > (1 << 20) else None
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    # Rank 0's median, as the peers' benchmarks report theirs, so the columns compare.
    med = float(np.median(times))
    alg = count * dtype.itemsize / med
    factor = {"all_sum": 2 * (p - 1) / p, "all_gather": (p - 1) / p, "broadcast": 1.0}[op]
    return {"size": count * dtype.itemsize, "count": count, "dtype": str(dtype),
            "time_us": med * 1e6, "algbw": alg / 1e9, "busbw": alg * factor / 1e9}


def _worker(args: argparse.Namespace) -> int:
    import ringcomm

    world = ringcomm.init()
    dtype = np.dtype(args.dtype)
    sizes = [_parse_size(s) for s in args.sizes.split(",")]
    if world.rank() == 0:
        print(f"# ringcomm {args.op} p={world.size()} backend={world.backend}", flush=True)
        print(f"{'size':>12} {'count':>11} {'dtype':>8} {'time_us':>10} {'algbw':>8} "
              f"{'busbw':>8}", flush=True)
    for nbytes in sizes:
        row = measure(args.op, nbytes, dtype, args.iters)
        if world.rank() == 0:
            print(f"{row['size']:>12} {row['count']:>11} {row['dtype']:>8} "
                  f"{row['time_us']:>10.1f} {row['algbw']:>8.3f} {row['busbw']:>8.3f}",
                  flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ringcomm bench", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2, help="local ranks to start (default 2)")
    p.add_argument("--op", choices=("all_sum", "all_gather", "broadcast"), default="all_sum")
    p.add_argument("--sizes", default=_DEFAULT_SIZES,
                   help=f"comma-separated sizes in bytes, 4k/16m suffixes allowed "
                        f"(default {_DEFAULT_SIZES})")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per size")
    p.add_argument("--connections-per-ip", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; start `-n` ranks first unless this process is one."""
    args = _parser().parse_args(argv)
    if os.environ.get(environment.RANK) is not None or os.environ.get(environment.MLX_RANK) is not None:
        return _worker(args)
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    cmd = [sys.executable, "-m", "ringcomm", "launch", "-n", str(args.n),
           "--connections-per-ip", str(args.connections_per_ip),
           sys.executable, "-m", "ringcomm.bench", *forwarded]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
