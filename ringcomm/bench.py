"""`ringcomm bench`: collective bandwidth and latency, in nccl-tests columns.

Run from a shell it checks its arguments, starts itself on `-n` local ranks
through `ringcomm launch` and prints what rank 0 measured; run inside a
launched job it measures. One row per op and size: size_B and count of the
array, dtype, time_us (rank 0's median over the timed iterations, as the peer
benchmarks report theirs), algbw_GBps = size_B / time and busbw_GBps = algbw
times the bytes each link carries per byte of the array: 2(p-1)/p for
all_sum, (p-1)/p for all_gather and all_to_all, 1 for broadcast. GB/s are 1e9 bytes per
second. Every result is checked, so a fast wrong answer fails the run.

`sendrecv` is a ping-pong between ranks 0 and 1 (the others wait): rank 0
sends, rank 1 receives and sends it back; time_us is half the round trip
(one way, as OSU's latency test reports it) and busbw = algbw.

`decode` is a tensor-parallel inference step: DECODE_CALLS all_sums of the
size (one per sharded layer; 16 KiB by default) and one 4-byte all_sum, back
to back. time_us is the median step's time per all_sum (over DECODE_CALLS +
1), bandwidths are those of the sized all_sums at that time, and steps_per_s
is what a model would generate per second were communication all it did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import environment

__all__ = ["OPS", "Row", "main", "measure", "plot"]

OPS = ("all_sum", "all_gather", "broadcast", "all_to_all", "sendrecv", "decode")
_BUS_FACTOR = {"all_sum": lambda p: 2 * (p - 1) / p, "all_gather": lambda p: (p - 1) / p,
               "broadcast": lambda p: 1.0, "all_to_all": lambda p: (p - 1) / p,
               "sendrecv": lambda p: 1.0, "decode": lambda p: 2 * (p - 1) / p}
# The decode step (as benchmarks/peers/_common.py's): calls of the size, then one of 4 bytes.
DECODE_CALLS = 100
DECODE_STEPS = 60
_DEFAULT_SIZES = "4,4096,65536,1048576,16777216,67108864"
_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_HEADER = ("size_B", "count", "dtype", "time_us", "algbw_GBps", "busbw_GBps", "path")
# Below this many seconds a run shows no progress line: it would only flicker.
_PROGRESS_AFTER_S = 2.0


@dataclass(frozen=True)
class Row:
    """One measurement: `op` on an array of `size_B` bytes at `ranks` ranks."""

    op: str
    ranks: int
    backend: str
    size_B: int
    count: int
    dtype: str
    iters: int
    time_us: float
    algbw_GBps: float
    busbw_GBps: float
    path: str = ""  # the transport and algorithm the op took (shm-slot, tcp-pipeline, ...)
    core: str = ""  # which core ran it: native (the compiled core) or python
    steps_per_s: float = 0.0  # decode only: steps per second

    def line(self) -> str:
        """Return the row in the table's columns."""
        steps = f" {self.steps_per_s:.0f} steps/s" if self.op == "decode" else ""
        return (f"{self.size_B:>12} {self.count:>11} {self.dtype:>8} {self.time_us:>10.1f} "
                f"{self.algbw_GBps:>10.3f} {self.busbw_GBps:>10.3f}  {self.path} ({self.core}){steps}")


def _table_head(op: str, ranks: int, backend: str) -> str:
    return (f"# ringcomm {op} p={ranks} backend={backend}; time_us is rank 0's median; "
            f"GBps = 1e9 bytes/s\n" + " ".join(f"{h:>{w}}" for h, w in
                                              zip(_HEADER, (12, 11, 8, 10, 10, 10))) + "  path (core)")


def measure(op: str, nbytes: int, dtype: np.dtype, iters: int | None = None) -> Row:
    """Return rank 0's median time and the bandwidths of `op` on `nbytes`, checking its result."""
    import ringcomm

    world = ringcomm.init()
    p, r = world.size(), world.rank()
    count = max(1, nbytes // dtype.itemsize)
    if op == "all_to_all":  # a block per rank
        count = max(p, count // p * p)
    x = np.full(count, r + 1, dtype=dtype)
    def sendrecv(x: np.ndarray) -> np.ndarray:
        if r == 0:
            ringcomm.send(x, 1)
            return ringcomm.recv_like(x, 1)
        if r == 1:
            y = ringcomm.recv_like(x, 0)
            ringcomm.send(y, 0)
            return y
        return np.ones_like(x)

    ops: dict[str, Callable[..., Any]] = {"all_sum": ringcomm.all_sum,
                                          "all_gather": ringcomm.all_gather,
                                          "broadcast": ringcomm.broadcast,
                                          "all_to_all": ringcomm.all_to_all,
                                          "sendrecv": sendrecv}
    if op == "sendrecv" and p < 2:
        raise ValueError("sendrecv needs at least 2 ranks; try -n 2")
    if op == "decode":
        return _decode(world, x, iters or DECODE_STEPS)
    fn = ops[op]
    if iters is None:
        iters = max(5, min(200, int(2e8 // max(nbytes, 1))))
    for _ in range(3):
        y = fn(x)
    expected = {"all_sum": p * (p + 1) // 2, "broadcast": 1, "sendrecv": 1}.get(op)
    if expected is not None and not (y == expected).all():
        raise AssertionError(f"{op} on {nbytes} bytes gave {y[:4]}, expected {expected}")
    if op == "all_to_all" and not (y.reshape(p, -1) == np.arange(1, p + 1).reshape(p, 1)).all():
        raise AssertionError(f"all_to_all on {nbytes} bytes: block i is not rank i's")
    times = []
    for _ in range(iters):
        ringcomm.barrier() if nbytes > (1 << 20) else None
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    # Rank 0's median, as the peers' benchmarks report theirs, so the columns compare.
    med = float(np.median(times)) / (2 if op == "sendrecv" else 1)
    size = count * dtype.itemsize
    alg = size / med
    return Row(op=op, ranks=p, backend=world.backend, size_B=size, count=count,
               dtype=str(dtype), iters=iters, time_us=med * 1e6, algbw_GBps=alg / 1e9,
               busbw_GBps=alg * _BUS_FACTOR[op](p) / 1e9, path=world._backend.path,
               core=world._backend.core)


def _decode(world: Any, x: np.ndarray, steps: int) -> Row:
    """Time decode steps of `x`-sized all_sums (see the module's docstring)."""
    import ringcomm

    p = world.size()
    one = np.ones(1, dtype=x.dtype)

    def step() -> tuple[np.ndarray, tuple[str, str]]:
        for _ in range(DECODE_CALLS):
            ringcomm.all_sum(x)
        path = world._backend.path, world._backend.core
        return ringcomm.all_sum(one), path

    for _ in range(3):
        y, (path, core) = step()
    if not (y == p).all():
        raise AssertionError(f"decode: the step's 4-byte all_sum gave {y}, expected {p}")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    med = step_s / (DECODE_CALLS + 1)
    alg = x.nbytes / med
    return Row(op="decode", ranks=p, backend=world.backend, size_B=x.nbytes, count=x.size,
               dtype=str(x.dtype), iters=steps, time_us=med * 1e6, algbw_GBps=alg / 1e9,
               busbw_GBps=alg * _BUS_FACTOR["decode"](p) / 1e9, path=path, core=core,
               steps_per_s=1.0 / step_s)


def plot(series: Mapping[str, Sequence[Mapping[str, float]]], path: str, title: str = "") -> None:
    """Write a PNG of busbw and time against size (log axes), one line per series.

    Each row needs `size_B`, `time_us` and `busbw_GBps`. Raises ImportError
    when matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bw, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows in series.items():
        rows = sorted(rows, key=lambda r: r["size_B"])
        sizes = [r["size_B"] for r in rows]
        bw.plot(sizes, [r["busbw_GBps"] for r in rows], marker="o", label=label)
        lat.plot(sizes, [r["time_us"] for r in rows], marker="o", label=label)
    for ax, ylabel in ((bw, "busbw (GB/s, 1e9 B/s)"), (lat, "time (µs, rank 0's median)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- argument checking: each type function says what was wrong and what to try ---

class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} -h)\n")


def _size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        value = float(t[:-1]) * _UNITS[t[-1]] if t and t[-1] in _UNITS else int(t)
    except ValueError:
        value = -1
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes; try a comma-separated list like 4,64k,16m")
    return int(value)


def _sizes(text: str) -> list[int]:
    return [_size(s) for s in text.split(",")]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _dtype(text: str) -> np.dtype:
    from .arrays import bfloat16

    try:
        dt = bfloat16 if text == "bfloat16" and bfloat16 is not None else np.dtype(text)
    except TypeError:
        dt = None
    if dt is None or (dt.kind not in "iufc" and dt != bfloat16):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a numeric dtype; try float32, float64, float16, int32 or bfloat16")
    return dt


def _ops(text: str) -> list[str]:
    ops = [s.strip() for s in text.split(",")]
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown op {bad[0]!r}; try one or more of {','.join(OPS)}")
    return ops


def _png(text: str) -> str:
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{text!r} does not end in .png; try --plot bench.png")
    parent = Path(text).parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(parent)!r} of {text!r} does not exist")
    return text


def ringcomm_version() -> str:
    from . import __version__

    return __version__


def _parser() -> _Parser:
    p = _Parser(prog="ringcomm bench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {ringcomm_version()}")
    p.add_argument("-n", type=_positive, default=2, help="local ranks to start (default 2)")
    p.add_argument("--op", type=_ops, default=["all_sum"],
                   help=f"op or comma-separated ops: {', '.join(OPS)} (default all_sum)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help=f"comma-separated sizes in bytes, k/m/g suffixes allowed "
                        f"(default {_DEFAULT_SIZES}; for decode alone 16384)")
    p.add_argument("--dtype", type=_dtype, default=np.dtype("float32"),
                   help="element type (default float32)")
    p.add_argument("--iters", type=_positive, default=None,
                   help="timed iterations per size (default: 200 down to 5 as sizes grow)")
    p.add_argument("--connections-per-ip", type=_positive, default=1)
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per row on stdout instead of the table")
    p.add_argument("--plot", type=_png, metavar="FILE.png",
                   help="also draw busbw and time against size (needs matplotlib)")
    return p


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """Return the checked arguments in the form a rank parses; rows always travel as JSON."""
    argv = ["--op", ",".join(args.op), "--sizes", ",".join(map(str, args.sizes)),
            "--dtype", str(args.dtype), "--json"]
    return argv + (["--iters", str(args.iters)] if args.iters is not None else [])


def _worker(args: argparse.Namespace) -> int:
    import ringcomm

    world = ringcomm.init()
    rows: list[Row] = []
    for op in args.op:
        if world.rank() == 0 and not args.json:
            print(_table_head(op, world.size(), world.backend), flush=True)
        for nbytes in args.sizes:
            row = measure(op, nbytes, args.dtype, args.iters)
            rows.append(row)
            if world.rank() == 0:
                print(json.dumps(asdict(row)) if args.json else row.line(), flush=True)
    if world.rank() == 0 and args.plot:
        _plot_rows(rows, args.plot)
    return 0


def _plot_rows(rows: Sequence[Row], path: str) -> None:
    series: dict[str, list[dict]] = {}
    for row in rows:
        series.setdefault(row.op, []).append(asdict(row))
    first = rows[0]
    plot(series, path, f"ringcomm p={first.ranks} backend={first.backend} dtype={first.dtype}")
    print(f"ringcomm bench: wrote {path}", file=sys.stderr, flush=True)


class _Progress:
    """A one-line count of finished rows on stderr, only on a terminal and only on long runs."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.shown = total, 0, False
        self.start = time.monotonic()
        self.on = sys.stderr.isatty()

    def step(self, row: Row) -> None:
        self.done += 1
        if self.on and time.monotonic() - self.start > _PROGRESS_AFTER_S:
            print(f"\r\x1b[K{self.done}/{self.total} rows; last: {row.op} {row.size_B} B",
                  end="", file=sys.stderr, flush=True)
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)


def _run_launched(args: argparse.Namespace) -> int:
    """Start the ranks, print rank 0's rows as a table or JSON, then plot them."""
    cmd = [sys.executable, "-m", "ringcomm", "launch", "-n", str(args.n),
           "--connections-per-ip", str(args.connections_per_ip),
           sys.executable, "-m", "ringcomm.bench", *_worker_argv(args)]
    rows: list[Row] = []
    progress = _Progress(len(args.op) * len(args.sizes))
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                try:
                    row = Row(**json.loads(line))
                except (ValueError, TypeError):
                    # Not a row: the program's own output goes where it would have gone.
                    print(line, end="", file=sys.stderr if args.json else sys.stdout, flush=True)
                    continue
                progress.clear()
                if args.json:
                    print(line, end="", flush=True)
                else:
                    if not rows or rows[-1].op != row.op:
                        print(_table_head(row.op, row.ranks, row.backend), flush=True)
                    print(row.line(), flush=True)
                rows.append(row)
                progress.step(row)
            code = proc.wait()
        except KeyboardInterrupt:
            # The launcher got the same SIGINT and stops the ranks; wait for it.
            code = proc.wait()
            code = code if code else 130
        finally:
            progress.clear()
    if code == 0 and args.plot and rows:
        _plot_rows(rows, args.plot)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; check arguments and start `-n` ranks first unless this is a rank."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [16 << 10] if args.op == ["decode"] else _sizes(_DEFAULT_SIZES)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed; "
                         "try: pip install matplotlib")
    if environment.ring_launch(os.environ).launched:
        return _worker(args)
    return _run_launched(args)


if __name__ == "__main__":
    raise SystemExit(main())
