"""The peers' all-reduce benchmarks on this machine: MLX's ring, OpenMPI and gloo.

    python benchmarks/peers/run.py [-n 2] [--sizes 4,4096,...] [mlx mpi gloo]

Each peer runs its own launcher (mlx.launch, mpirun, torchrun) from the peers'
virtual environment (see peerenv.py; made on first use) on `-n` ranks of this
machine, and prints one line per size:

    <peer> p=<ranks> bytes=<size> median_us=<t> algbw_GBps=<a> busbw_GBps=<b>

Before its rows each peer prints `# <peer> transport=<...>`: the transport is
fixed by the launch (MLX's ring and gloo speak TCP only; OpenMPI is held to its
shared-memory BTL here and to its TCP BTL between hosts), so it is known, not
guessed. A peer that fails prints `# <peer> failed: <reason>` and the others run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peerenv  # noqa: E402

__all__ = ["PEERS", "Job", "Result", "local_job", "parse", "run_job", "run_together"]

PEERS = ("mlx", "mpi", "gloo")
_LINE = re.compile(r"^(\w+) p=(\d+) bytes=(\d+) median_us=([\d.]+) algbw_GBps=([\d.]+) "
                   r"busbw_GBps=([\d.]+)\s*$")
_ROOT_VARS = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@dataclass(frozen=True)
class Result:
    """One peer's row: rank 0's median time and bandwidths for one size."""

    peer: str
    ranks: int
    size_B: int
    time_us: float
    algbw_GBps: float
    busbw_GBps: float

    def line(self) -> str:
        return (f"{self.peer} p={self.ranks} bytes={self.size_B} median_us={self.time_us:.1f} "
                f"algbw_GBps={self.algbw_GBps:.3f} busbw_GBps={self.busbw_GBps:.3f}")


@dataclass
class Job:
    """A peer's benchmark: the commands to start together and what carries their bytes."""

    peer: str
    transport: str
    argvs: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> list[Result]:
    """Return the result lines found in `text`."""
    rows = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append(Result(m[1], int(m[2]), int(m[3]), float(m[4]), float(m[5]), float(m[6])))
    return rows


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free on `host` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def base_env(root: Path) -> dict[str, str]:
    """Return this environment with the peers' bin first on PATH and OpenMPI allowed as root."""
    env = dict(os.environ)
    env["PATH"] = f"{peerenv.bin_dir(root)}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)  # the peers import nothing of ringcomm's
    env.update(_ROOT_VARS)
    return env


def local_job(peer: str, n: int, sizes: list[int], root: Path, op: str = "all_sum") -> Job:
    """Return `peer`'s benchmark of `op` (all_sum, or sendrecv for mpi) on `n` ranks of this
    machine over loopback."""
    bin_dir = peerenv.bin_dir(root)
    python = str(bin_dir / "python")
    script = str(HERE / (f"bench_{peer}.py" if op == "all_sum" else f"bench_{peer}_{op}.py"))
    if not Path(script).exists():
        raise ValueError(f"no {op} benchmark for {peer}; {op} compares with: "
                         + ", ".join(p for p in PEERS if (HERE / f"bench_{p}_{op}.py").exists()))
    args = [str(s) for s in sizes]
    env = base_env(root)
    if peer == "mlx":
        argv = [str(bin_dir / "mlx.launch"), "--backend", "ring", "-n", str(n),
                "-p", str(free_port()), "--python", python, "--", script, *args]
        return Job(peer, "TCP over loopback (MLX ring backend)", [argv], env)
    if peer == "mpi":
        # ob1 with only the shared-memory BTL (plus self): the transport is certain, and it
        # is what OpenMPI picks by itself between ranks of one host.
        argv = [str(bin_dir / "mpirun"), "-n", str(n), "--oversubscribe", "--bind-to", "none",
                "--mca", "pml", "ob1", "--mca", "btl", "self,sm", python, script, *args]
        return Job(peer, "shared memory (OpenMPI ob1, btl sm)", [argv], env)
    if peer == "gloo":
        argv = [str(bin_dir / "torchrun"), "--nproc-per-node", str(n), "--master-addr",
                "127.0.0.1", "--master-port", str(free_port()), script, *args]
        env["GLOO_SOCKET_IFNAME"] = "lo"
        return Job(peer, "TCP over loopback (gloo)", [argv], env)
    raise ValueError(f"unknown peer {peer!r}; expected one of {', '.join(PEERS)}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """End every process group we started: SIGTERM, a short deadline, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        deadline = time.monotonic() + wait
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.01, deadline - time.monotonic()))
    # Children that left the group (daemonised) are ended by whoever owns their namespace.


def run_together(argvs: list[list[str]], env: dict[str, str], timeout: float
                 ) -> list[tuple[int | None, str, str]]:
    """Start every argv at once in its own process group; return (code, stdout, stderr) each.

    On a timeout the code is None; on Ctrl-C every group is ended before the
    KeyboardInterrupt goes on.
    """
    procs: list[subprocess.Popen] = []
    outs = []
    try:
        for argv in argvs:
            # Files, not pipes: a chatty launcher can never block on a full pipe.
            out = tempfile.TemporaryFile()
            err = tempfile.TemporaryFile()
            outs.append((out, err))
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, start_new_session=True))
        deadline = time.monotonic() + timeout
        codes: list[int | None] = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.01, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
    finally:
        _stop(procs)
    results = []
    for code, (out, err) in zip(codes, outs):
        out.seek(0)
        err.seek(0)
        results.append((code, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace")))
        out.close()
        err.close()
    return results


def run_job(job: Job, timeout: float = 600.0) -> tuple[list[Result], str]:
    """Run `job`; return its rows and, when it failed, why (else "")."""
    ran = run_together(job.argvs, job.env, timeout)
    rows = [r for code, out, _ in ran for r in parse(out) if r.peer == job.peer]
    for code, _out, err in ran:
        tail = " | ".join(err.strip().splitlines()[-3:])
        if code is None:
            return rows, f"timed out after {timeout:.0f} s; {tail}"
        if code != 0:
            return rows, f"exit code {code}; {tail}"
    if not rows:
        return rows, f"printed no rows; {ran[0][2].strip()[-300:]}"
    return rows, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2, help="ranks (default 2)")
    ap.add_argument("--sizes", default=None, help="comma-separated bytes (default: 4 B to 64 MiB)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per peer")
    ap.add_argument("peers", nargs="*", default=[], metavar="PEER", help="mlx, mpi, gloo (default all)")
    args = ap.parse_args()
    if args.n < 1:
        ap.error(f"-n must be at least 1, got {args.n}")
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peer {unknown[0]!r}; expected some of {', '.join(PEERS)}")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else []
    root = peerenv.ensure()
    failed = 0
    for peer in args.peers or PEERS:
        job = local_job(peer, args.n, sizes, root)
        print(f"# {peer} transport={job.transport}", flush=True)
        rows, error = run_job(job, args.timeout)
        for row in rows:
            print(row.line(), flush=True)
        if error:
            failed += 1
            print(f"# {peer} failed: {error}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
