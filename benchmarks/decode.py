"""The tensor-parallel decode step side by side: ringcomm, OpenMPI (mpi4py) and gloo, in one run.

    python benchmarks/decode.py [-n 2,4] [--peers mpi,gloo] [--size 16384]
    sudo python benchmarks/decode.py --hosts 2 [--rate 10gbit] [--ranks-per-host 1]

A step is what a model sharded over the ranks does per generated token: 100
all_sums of one layer's activations (16 KiB by default) and one 4-byte
all_sum, back to back (`ringcomm bench --op decode`, and the peers'
benchmarks/peers/bench_<peer>_decode.py, time the same step the same way).
The table gives steps/s and µs per all_sum (the median step over 101) for
each, and ringcomm's steps/s over each peer's (> 1: ringcomm is faster).

`-n` runs on this machine (ringcomm through shared memory, OpenMPI through its
shared-memory BTL, gloo over loopback TCP). `--hosts 2` builds two test hosts
(network namespaces with sshd, each host's egress shaped by tc to `--rate`;
see benchmarks/multihost.py) and runs one rank per host of each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

import compare  # noqa: E402
import peerenv  # noqa: E402
import run as peers  # noqa: E402

CALLS = 101  # all_sums per step (benchmarks/peers/_common.py, ringcomm.bench)
PEERS = ("mpi", "gloo")


def steps(time_us: float) -> float:
    return 1e6 / (time_us * CALLS)


def table(title: str, rows: dict[str, dict[str, float]], settings: list[str],
          names: list[str]) -> str:
    """Return the Markdown table: per setting, steps/s and µs per all_sum of each, and ratios."""
    head = ["setting", "ringcomm steps/s", "ringcomm µs/all_sum"]
    for p in names:
        head += [f"{p} steps/s", f"{p} µs/all_sum", f"ringcomm/{p}"]
    lines = [title, "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in settings:
        got = rows.get(s, {})
        rt = got.get("ringcomm")
        cells = [s, f"{steps(rt):.0f}" if rt else "n/a", f"{rt:.1f}" if rt else "n/a"]
        for p in names:
            pt = got.get(p)
            cells += [f"{steps(pt):.0f}" if pt else "n/a", f"{pt:.1f}" if pt else "n/a",
                      f"{pt / rt:.2f}x" if pt and rt else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def local(ns: list[int], names: list[str], size: int, timeout: float) -> int:
    root = peerenv.ensure()
    rows: dict[str, dict[str, float]] = {}
    notes, paths = [], []
    for n in ns:
        setting = f"one machine, p={n}"
        got = rows.setdefault(setting, {})
        for p in names:
            print(f"p={n}: {p}", file=sys.stderr, flush=True)
            res, error = peers.run_job(peers.local_job(p, n, [size], root, op="decode"), timeout)
            if error:
                notes.append(f"{p} at p={n}: {error}")
            for r in res:
                got[p] = r.time_us
        print(f"p={n}: ringcomm", file=sys.stderr, flush=True)
        found, error = compare.run_ringcomm(n, [size], timeout, op="decode")
        if error:
            notes.append(f"ringcomm at p={n}: {error}")
        for r in found:
            got["ringcomm"] = r["time_us"]
            paths.append(f"p={n}: {r['path']} ({r['core']})")
    print(table(f"decode step: 100 all_sums of {size} B + one of 4 B, float32; ringcomm "
                f"{'; '.join(paths)}", rows, list(rows), names))
    for note in notes:
        print(f"note: {note}")
    return 1 if notes else 0


def hosts(names: list[str], size: int, rate: str, per_host: int, timeout: float) -> int:
    import multihost
    import netns

    reason = netns.skip_reason()
    if reason is not None:
        print(f"decode: cannot build test hosts here: {reason}", file=sys.stderr)
        return 2
    root = peerenv.ensure()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, multihost._interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="ringcomm-decode-"))
    cluster = None
    setting = f"2 hosts x {per_host}, {rate}"
    rows: dict[str, dict[str, float]] = {setting: {}}
    notes: list[str] = []
    path = "?"
    try:
        cluster = netns.build(workdir / "hosts", count=2)
        multihost.shape(cluster, rate)
        jobs = [multihost.ringcomm_job(cluster, [size], per_host, op="decode")]
        jobs += [multihost.peer_job(p, cluster, [size], root, workdir, op="decode") for p in names]
        for job in jobs:
            print(f"running {job.peer}", file=sys.stderr, flush=True)
            if job.peer == "ringcomm":
                (code, out, err), = peers.run_together(job.argvs, job.env, timeout)
                found = compare.parse_bench_json(out)
                for r in found:
                    rows[setting]["ringcomm"] = r["time_us"]
                    path = f"{r['path']} ({r['core']})"
                if code != 0 or not found:
                    notes.append(f"ringcomm exited {code}: {err.strip()[-300:]}")
            else:
                got, error = peers.run_job(job, timeout)
                for r in got:
                    rows[setting][job.peer] = r.time_us
                if error:
                    notes.append(f"{job.peer}: {error}")
            strays = cluster.wait_no_strays(10.0)
            if strays:
                notes.append(f"after {job.peer}, processes left on the hosts: {strays}")
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if cluster is not None:
            netns.teardown(cluster)
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(table(f"decode step: 100 all_sums of {size} B + one of 4 B, float32, 2 test hosts, "
                f"each host's egress shaped to {rate}; ringcomm {per_host} rank(s) per host "
                f"({path}), peers 1", rows, [setting], names))
    for note in notes:
        print(f"note: {note}")
    return 1 if notes else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", default="2,4", help="comma-separated rank counts on this machine")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated: mpi, gloo")
    ap.add_argument("--size", type=int, default=16 << 10, help="bytes per layer all_sum")
    ap.add_argument("--hosts", type=int, choices=(2,), help="run between 2 test hosts instead")
    ap.add_argument("--rate", default="10gbit", help="tc rate of each test host's link")
    ap.add_argument("--ranks-per-host", type=int, default=1, choices=range(1, 5), metavar="N")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    args = ap.parse_args()
    names = [p for p in args.peers.split(",") if p]
    if any(p not in PEERS for p in names):
        ap.error(f"--peers takes some of {','.join(PEERS)}, got {args.peers!r}")
    try:
        ns = [int(v) for v in args.n.split(",")]
    except ValueError:
        ap.error(f"-n takes rank counts like 2,4, got {args.n!r}")
    if args.size < 4:
        ap.error(f"--size must be at least 4 bytes, got {args.size}")
    if args.hosts:
        if os.geteuid() != 0:
            ap.error("--hosts builds network namespaces: run it as root")
        return hosts(names, args.size, args.rate, args.ranks_per_host, args.timeout)
    return local(ns, names, args.size, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
