"""all_sum side by side: ringcomm's ring against MLX's ring, OpenMPI and gloo, in one run.

    python benchmarks/compare.py [-n 2] [--peers ../shared/peers/run.sh] [--rounds 1]

Runs the peers' benchmark script (one line per size: `<peer> p=<n> bytes=<b>
median_us=<t> algbw_GBps=<a> busbw_GBps=<b>`), then `ringcomm bench` on the
same sizes, alternating for --rounds rounds, and prints one Markdown table of
float32 all_sum medians with busbw, plus ringcomm's ratios against each peer.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SIZES = [4, 4096, 65536, 1 << 20, 16 << 20, 64 << 20]
_PEER = re.compile(r"^(\w+) p=(\d+) bytes=(\d+) median_us=([\d.]+) algbw_GBps=([\d.]+) "
                   r"busbw_GBps=([\d.]+)")


def run_peers(script: Path, n: int) -> dict[tuple[str, int], tuple[float, float]]:
    """Return {(peer, bytes): (median_us, busbw)} from the peers' script."""
    out = subprocess.run(["bash", str(script), "-n", str(n)], capture_output=True, text=True,
                         timeout=1800)
    rows = {}
    for line in out.stdout.splitlines():
        m = _PEER.match(line)
        if m:
            rows[(m[1], int(m[3]))] = (float(m[4]), float(m[6]))
    if not rows:
        sys.exit(f"the peers' script printed no results:\n{out.stderr[-2000:]}")
    return rows


def run_ringcomm(n: int) -> dict[int, tuple[float, float]]:
    """Return {bytes: (median_us, busbw)} from `ringcomm bench`."""
    cmd = [sys.executable, "-m", "ringcomm", "bench", "-n", str(n),
           "--sizes", ",".join(map(str, SIZES))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 6 and parts[0].isdigit():
            rows[int(parts[0])] = (float(parts[3]), float(parts[5]))
    if not rows:
        sys.exit(f"ringcomm bench printed no results:\n{out.stdout}\n{out.stderr[-2000:]}")
    return rows


def main() -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2)
    ap.add_argument("--peers", type=Path, default=here.parent.parent / "shared/peers/run.sh")
    ap.add_argument("--rounds", type=int, default=1, help="alternate peers and ringcomm this often")
    args = ap.parse_args()
    samples: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for _ in range(args.rounds):
        for key, val in run_peers(args.peers, args.n).items():
            samples[key].append(val)
        for size, val in run_ringcomm(args.n).items():
            samples[("ringcomm", size)].append(val)
    med = {k: (statistics.median(t for t, _ in v), statistics.median(b for _, b in v))
           for k, v in samples.items()}
    peers = sorted({p for p, _ in med if p != "ringcomm"})
    head = ["bytes", "ringcomm us", "ringcomm busbw"]
    for p in peers:
        head += [f"{p} us", f"{p} busbw", f"ringcomm/{p}"]
    print(f"float32 all_sum, p={args.n}, median of {args.rounds} round(s); busbw in GB/s; "
          "ratio = ringcomm busbw / peer busbw (latency ratio = peer us / ringcomm us at 4 B)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for size in SIZES:
        rt, rb = med.get(("ringcomm", size), (float("nan"), float("nan")))
        row = [str(size), f"{rt:.1f}", f"{rb:.3f}"]
        for p in peers:
            pt, pb = med.get((p, size), (float("nan"), float("nan")))
            ratio = pt / rt if size <= 4 else (rb / pb if pb else float("inf"))
            row += [f"{pt:.1f}", f"{pb:.3f}", f"{ratio:.2f}x"]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
