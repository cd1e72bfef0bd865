"""Two source trees of ringcomm side by side, interleaved in one sitting: did a change cost speed?

    python benchmarks/ab.py --old ../ringcomm-before --new . [-n 2,4] [--rounds 2]
                            [--ops all_sum,sendrecv,decode]

Each round runs `ringcomm bench --json` from the old tree, then from the new one (each with
its own in-place build of the compiled core: `python setup.py build_ext --inplace` in each),
for every rank count and op, so both see the same machine load; the table holds each one's
median over rounds of rank 0's median time, and new/old (below 1: the new tree is faster).
A refactor that should not change speed is within noise when new/old stays inside the spread
of the rounds themselves (printed as each one's range).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SIZES = "4,4096,65536,1048576,16777216,67108864"


def bench(tree: Path, n: int, op: str, timeout: float, sizes: str | None) -> dict[int, float]:
    """Return {size: rank 0's median µs} of `ringcomm bench` run from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if sizes is None:
        sizes = "16384" if op == "decode" else (
            "4,16384,65536,1048576" if op == "sendrecv" else SIZES)
    cmd = [sys.executable, "-m", "ringcomm", "bench", "-n", str(n), "--json", "--op", op,
           "--sizes", sizes]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                         cwd=tree)
    if run.returncode != 0:
        raise SystemExit(f"{tree}: ringcomm bench -n {n} --op {op} exited {run.returncode}:\n"
                         f"{run.stderr[-2000:]}")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {int(r["size_B"]): float(r["time_us"]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the tree before the change")
    ap.add_argument("--new", type=Path, required=True, help="the tree after it")
    ap.add_argument("-n", default="2,4", help="comma-separated rank counts (default 2,4)")
    ap.add_argument("--rounds", type=int, default=2, help="old/new pairs per setting")
    ap.add_argument("--ops", default="all_sum", help="comma-separated ops of ringcomm bench")
    ap.add_argument("--sizes", help="comma-separated sizes for every op (default: per op)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per bench run")
    args = ap.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for n in (int(x) for x in args.n.split(",")):
        for op in args.ops.split(","):
            times: dict[tuple[str, int], list[float]] = defaultdict(list)
            for _ in range(args.rounds):
                for name, tree in trees.items():  # old, then new, every round
                    for size, t in bench(tree, n, op, args.timeout, args.sizes).items():
                        times[(name, size)].append(t)
            print(f"\n{op}, p={n}, {args.rounds} round(s) each, interleaved; time = rank 0's "
                  "median in µs (median of rounds, [min, max] of rounds)")
            print("| size | old | new | new/old |\n|---|---|---|---|")
            for size in sorted({s for _, s in times}):
                old, new = times[("old", size)], times[("new", size)]
                mo, mn = statistics.median(old), statistics.median(new)
                print(f"| {size} | {mo:.1f} [{min(old):.1f}, {max(old):.1f}] | {mn:.1f} "
                      f"[{min(new):.1f}, {max(new):.1f}] | {mn / mo:.2f} |")


if __name__ == "__main__":
    main()
