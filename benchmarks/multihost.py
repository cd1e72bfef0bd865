"""all_sum between two test hosts on a shaped link: ringcomm and every peer, beside raw TCP.

    sudo python benchmarks/multihost.py [--rate 10gbit] [--sizes ...] [--peers mlx,mpi,gloo]
                                        [--ranks-per-host 2] [--with-tcp]

Builds two hosts on this machine (network namespaces on a bridge, each with its
own sshd; tests/multihost/netns.py), limits what each host sends to `--rate`
with a token bucket (`tc qdisc replace dev eth0 root tbf rate R burst B latency
L` inside the host), measures one raw TCP stream from host 1 to host 2
(benchmarks/tcp_stream.py), then runs one rank per host of:

- ringcomm: `ringcomm launch --hosts ip1,ip2 -n 1 -m ringcomm.bench --json` (ssh)
- mlx: `mlx.launch --hosts ip1,ip2 -n 1 --backend ring` (ssh)
- mpi: `mpirun --hostfile` over the test ssh, ob1 with the TCP BTL only
- gloo: one `torchrun --nnodes 2` per host through `ip netns exec`, rendezvous on host 1

and prints one Markdown table: time_us and algbw_GBps per size for each, and
each one's algbw as a share of the raw stream. An all_sum across 2 hosts must
send size_B out of each host (half in the reduce-scatter, half in the
all-gather) however many ranks each host has, so algbw is at most the link's
rate and the raw stream is its ceiling. With `--ranks-per-host 2` ringcomm
runs 2 ranks on each host (hierarchical: shared memory inside a host, both
local ranks' rings across), and `--with-tcp` adds ringcomm with
RINGCOMM_TRANSPORT=tcp (the flat ring over all 4 ranks). The peers run one
rank per host. Traffic goes only between the hosts' own
addresses (and to the bridge address, where mpirun's daemons report back).
Every process started here is ended and the hosts are removed on exit,
Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(REPO / "tests" / "multihost"))
sys.path.insert(0, str(HERE))

import netns  # noqa: E402
import peerenv  # noqa: E402
import run as peers  # noqa: E402
from compare import parse_bench_json, ringcomm_transport  # noqa: E402

SIZES = [4, 4096, 65536, 1 << 20, 16 << 20, 64 << 20]
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)bit$")


def rate_bits(text: str) -> float:
    """Return bits per second of a tc rate such as '1gbit' or '500mbit'."""
    m = _RATE.match(text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate; try 1gbit, 10gbit or 500mbit")
    return float(m[1]) * {"k": 1e3, "m": 1e6, "g": 1e9}[m[2]]


def tbf_argv(rate: str) -> list[str]:
    """Return the tc command that shapes a host's eth0 to `rate`.

    The bucket holds 0.5 ms at the rate, at least 64 KiB (one TSO segment
    from veth). A raw stream reached the rate with buckets from 64 KiB to
    4 MiB alike (0.120 GB/s at 1gbit, 1.19 GB/s at 10gbit); a smaller bucket
    lets less of a short message through faster than the rate.
    """
    burst = max(64 << 10, int(rate_bits(rate) / 8 * 0.0005))
    return ["tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate,
            "burst", str(burst), "latency", "50ms"]


def shape(cluster: netns.Cluster, rate: str) -> None:
    for host in cluster.hosts:
        res = cluster.netns_exec(host, tbf_argv(rate))
        if res.returncode != 0:
            raise RuntimeError(f"shaping {host.netns} failed: {res.stderr.strip()}")


def stream(cluster: netns.Cluster, python: str, seconds: float) -> tuple[float | None, str]:
    """Return the raw TCP stream's GB/s from host 1 to host 2, and why it failed (else "")."""
    a, b = cluster.hosts[:2]
    port = peers.free_port()
    script = str(HERE / "tcp_stream.py")
    recv = ["ip", "netns", "exec", b.netns, python, script, "recv", b.ip, str(port)]
    send = ["ip", "netns", "exec", a.netns, python, script, "send", b.ip, str(port),
            "--seconds", str(seconds)]
    (rc, out, err), (sc, _, serr) = peers.run_together([recv, send], dict(os.environ),
                                                       seconds + 60)
    if rc != 0 or sc != 0:
        return None, f"raw stream failed: {err.strip()[-200:]} {serr.strip()[-200:]}"
    return float(json.loads(out)["GBps"]), ""


def ringcomm_job(cluster: netns.Cluster, sizes: list[int], per_host: int = 1,
                 transport: str = "auto", op: str = "all_sum") -> peers.Job:
    env = cluster.env()
    env["PYTHONPATH"] = str(REPO)
    env.pop("RINGCOMM_TIMEOUT", None)
    argv = [sys.executable, "-m", "ringcomm", "launch", "--hosts", ",".join(cluster.ips[:2]),
            "-n", str(per_host), "--no-stdin", "--env", f"PYTHONPATH={REPO}",
            "--env", f"RINGCOMM_TRANSPORT={transport}", "-m", "ringcomm.bench",
            "--json", "--op", op, "--sizes", ",".join(map(str, sizes))]
    name = "ringcomm" if transport == "auto" else f"ringcomm-{transport}"
    return peers.Job(name, f"{per_host} rank(s) per host, RINGCOMM_TRANSPORT={transport}",
                     [argv], env)


def peer_job(peer: str, cluster: netns.Cluster, sizes: list[int], root: Path,
             workdir: Path, op: str = "all_sum") -> peers.Job:
    """Return `peer`'s benchmark of `op` with one rank on each of the first two hosts."""
    bin_dir = peerenv.bin_dir(root)
    python = str(bin_dir / "python")
    script = str(HERE / "peers" / (f"bench_{peer}.py" if op == "all_sum" else
                                   f"bench_{peer}_{op}.py"))
    args = [str(s) for s in sizes]
    env = cluster.env(peers.base_env(root))
    ips = cluster.ips[:2]
    subnet = ips[0].rsplit(".", 1)[0] + ".0/24"
    if peer == "mlx":
        argv = [str(bin_dir / "mlx.launch"), "--hosts", ",".join(ips), "-n", "1",
                "--backend", "ring", "-p", str(peers.free_port()), "--python", python,
                "--", script, *args]
        return peers.Job(peer, "TCP over the shaped link (MLX ring backend)", [argv], env)
    if peer == "mpi":
        hostfile = workdir / "openmpi.hosts"
        hostfile.write_text("".join(f"{ip} slots=1\n" for ip in ips))
        argv = [str(bin_dir / "mpirun"), "--hostfile", str(hostfile), "-n", "2",
                "--map-by", "node", "--bind-to", "none",
                "--prtemca", "plm_rsh_agent", str(cluster.bin_dir / "ssh"),
                "--prtemca", "oob_tcp_if_include", subnet,
                "--mca", "oob_tcp_if_include", subnet,
                "--mca", "pml", "ob1", "--mca", "btl", "self,tcp",
                "--mca", "btl_tcp_if_include", subnet,
                "-x", "PATH", "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x",
                "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", python, script, *args]
        return peers.Job(peer, "TCP over the shaped link (OpenMPI ob1, btl tcp)", [argv], env)
    if peer == "gloo":
        port = str(peers.free_port())
        env["GLOO_SOCKET_IFNAME"] = "eth0"
        argvs = [["ip", "netns", "exec", host.netns, str(bin_dir / "torchrun"), "--nnodes", "2",
                  "--node-rank", str(i), "--nproc-per-node", "1", "--master-addr", ips[0],
                  "--master-port", port, script, *args]
                 for i, host in enumerate(cluster.hosts[:2])]
        return peers.Job(peer, "TCP over the shaped link (gloo)", argvs, env)
    raise ValueError(f"unknown peer {peer!r}")


def run_ringcomm(job: peers.Job, timeout: float) -> tuple[list[peers.Result], str, str]:
    """Return ringcomm's rows, why it failed (else ""), and the paths its sizes took."""
    (code, out, err), = peers.run_together(job.argvs, job.env, timeout)
    found = parse_bench_json(out)
    rows = [peers.Result(job.peer, r["ranks"], r["size_B"], r["time_us"], r["algbw_GBps"],
                         r["busbw_GBps"]) for r in found]
    if code != 0 or not rows:
        tail = " | ".join(err.strip().splitlines()[-3:])
        return rows, f"exit code {code}; {tail}", ""
    return rows, "", ringcomm_transport(found)


def table(rate: str, sizes: list[int], names: list[str],
          rows: dict[str, dict[int, peers.Result]], link: float | None) -> str:
    head = ["size_B"]
    for n in names:
        head += [f"{n} time_us", f"{n} algbw_GBps"] + (["of stream"] if link else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes:
        cells = [str(size)]
        for n in names:
            r = rows.get(n, {}).get(size)
            if r is None:
                cells += ["n/a", "n/a"] + (["n/a"] if link else [])
            else:
                cells += [f"{r.time_us:.1f}", f"{r.algbw_GBps:.3f}"]
                cells += [f"{r.algbw_GBps / link:.0%}"] if link else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_program(cluster: netns.Cluster, program: str, per_host: int, link: float | None,
                rate: str, timeout: float) -> int:
    """Run a ringcomm program with `per_host` ranks on each of two shaped hosts; print its output."""
    env = cluster.env()
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "ringcomm", "launch", "--hosts", ",".join(cluster.ips[:2]),
            "-n", str(per_host), "--no-stdin", "--env", f"PYTHONPATH={REPO}",
            "--env", "OPENBLAS_NUM_THREADS=1", "--env", "OMP_NUM_THREADS=1", "--",
            sys.executable, *program.split()]
    (code, out, err), = peers.run_together([argv], env, timeout)
    print(f"2 hosts x {per_host} rank(s), each host's egress shaped to {rate}; raw TCP stream "
          + (f"{link:.3f} GB/s" if link else "not measured"))
    print(out, end="")
    if code != 0:
        print(f"note: the program exited {code}: {' | '.join(err.strip().splitlines()[-3:])}")
    return code


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", default="10gbit", help="tc rate of each host's link (default 10gbit)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated bytes (default 4 B to 64 MiB)")
    ap.add_argument("--peers", default=",".join(peers.PEERS),
                    help=f"comma-separated peers (default {','.join(peers.PEERS)})")
    ap.add_argument("--stream-seconds", type=float, default=3.0)
    ap.add_argument("--ranks-per-host", type=int, default=1, choices=range(1, 9), metavar="N",
                    help="ringcomm's ranks on each host (default 1; the peers run 1)")
    ap.add_argument("--with-tcp", action="store_true",
                    help="also run ringcomm with RINGCOMM_TRANSPORT=tcp")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per benchmark")
    ap.add_argument("--program", metavar="'SCRIPT ARGS'",
                    help="instead of the all_sum table, run this ringcomm program between the "
                         "shaped hosts (ringcomm launch --hosts ... -n RANKS_PER_HOST) and print "
                         "its output, e.g. --program 'benchmarks/overlap.py --case mlp'")
    args = ap.parse_args()
    try:
        rate_bits(args.rate)
        sizes = [int(s) for s in args.sizes.split(",")]
    except (argparse.ArgumentTypeError, ValueError) as e:
        ap.error(f"{e}; --rate takes e.g. 1gbit, --sizes whole bytes like 4,65536")
    names = [p for p in args.peers.split(",") if p]
    if any(p not in peers.PEERS for p in names):
        ap.error(f"--peers takes some of {','.join(peers.PEERS)}, got {args.peers!r}")
    reason = netns.skip_reason()
    if reason is not None:
        print(f"multihost: cannot build test hosts here: {reason}", file=sys.stderr)
        return 2
    if shutil.which("tc") is None:
        print("multihost: tc is missing; try: apt-get install iproute2", file=sys.stderr)
        return 2

    root = peerenv.ensure()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="ringcomm-multihost-"))
    cluster = None
    link: float | None = None
    rows: dict[str, dict[int, peers.Result]] = {}
    transports: dict[str, str] = {}
    notes: list[str] = []
    try:
        cluster = netns.build(workdir / "hosts", count=2)
        shape(cluster, args.rate)
        print(f"hosts {', '.join(cluster.ips)} up, each link shaped to {args.rate}",
              file=sys.stderr, flush=True)
        link, error = stream(cluster, str(peerenv.bin_dir(root) / "python"),
                             args.stream_seconds)
        if error:
            notes.append(error)
        if args.program:
            return run_program(cluster, args.program, args.ranks_per_host, link, args.rate,
                               args.timeout)
        jobs = [ringcomm_job(cluster, sizes, args.ranks_per_host)]
        if args.with_tcp:
            jobs.append(ringcomm_job(cluster, sizes, args.ranks_per_host, "tcp"))
        jobs += [peer_job(p, cluster, sizes, root, workdir) for p in names]
        for job in jobs:
            print(f"running {job.peer}", file=sys.stderr, flush=True)
            transports[job.peer] = job.transport
            if job.peer.startswith("ringcomm"):
                got, error, paths = run_ringcomm(job, args.timeout)
                transports[job.peer] += f"; {paths}"
            else:
                got, error = peers.run_job(job, args.timeout)
            rows[job.peer] = {r.size_B: r for r in got}
            if error:
                notes.append(f"{job.peer} did not finish: {error}")
            strays = cluster.wait_no_strays(10.0)
            if strays:
                notes.append(f"after {job.peer}, processes left on the hosts: {strays}")
    except KeyboardInterrupt:
        print("multihost: interrupted; ending every process and removing the hosts",
              file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if cluster is not None:
            left = netns.teardown(cluster)
            if left:
                print(f"multihost: could not remove {left}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    names = ["ringcomm", *(["ringcomm-tcp"] if args.with_tcp else []), *names]
    ranks = {r.ranks for got in rows.values() for r in got.values()} or {2}
    print(f"float32 all_sum, 2 hosts; ringcomm {args.ranks_per_host} rank(s) per host, peers 1 "
          f"(p={sorted(ranks)}); each host's egress shaped to {args.rate} (tbf); time_us = "
          "rank 0's median; algbw = size / time in GB/s (1e9 B/s); 'of stream' = algbw / raw "
          "TCP stream")
    print(f"raw TCP stream host 1 -> host 2: {link:.3f} GB/s" if link else
          "raw TCP stream: not measured")
    print("transports: " + "; ".join(f"{k}: {v}" for k, v in transports.items()))
    print(table(args.rate, sizes, names, rows, link))
    for note in notes:
        print(f"note: {note}")
    return 1 if notes else 0


if __name__ == "__main__":
    raise SystemExit(main())
