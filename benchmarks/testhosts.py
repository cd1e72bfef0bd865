"""Shaped test hosts for a benchmark's ``--hosts 2`` mode, and ranks started on them.

    with testhosts.shaped("torch_ddp", rate="10gbit") as cluster:
        code, out, err = testhosts.launch(cluster, [sys.executable, script, ...], timeout=600)

`shaped` builds two hosts on this machine as benchmarks/multihost.py does (network namespaces
on a bridge, each with its own hostname and sshd; tests/multihost/netns.py), shapes what each
host sends to `rate` (multihost.shape: tc tbf on the host's eth0), and on the way out, however
the block ends (an exception, Ctrl-C, SIGTERM or SIGHUP), ends every process on the hosts,
removes the namespaces, veths and bridge, and unlinks the shared-memory segments that ranks
created meanwhile and left behind. `launch` runs a program with one rank (or `per_host`) on each
host through ``ringcomm launch --hosts`` over the hosts' ssh, and waits for the hosts to hold
nothing but their sshd again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (HERE / "peers", REPO / "tests" / "multihost", HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import multihost  # noqa: E402
import netns  # noqa: E402
import run as peers  # noqa: E402

from ringcomm.transport import segment  # noqa: E402

__all__ = ["HostsUnavailable", "launch", "shaped"]


class HostsUnavailable(RuntimeError):
    """The test hosts cannot be built here (not root, no ip netns, sshd or tc)."""


def _dead_segments(before: set[str]) -> list[str]:
    """Return the ringcomm segments made since `before` whose creator has exited."""
    left = []
    for name in segment.leftovers():
        if name in before:
            continue
        try:
            pid = int(name[len(segment.PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not segment.alive(pid):
            left.append(name)
    return left


@contextlib.contextmanager
def shaped(what: str, rate: str = "10gbit", count: int = 2) -> Iterator[netns.Cluster]:
    """Build `count` test hosts whose egress is shaped to `rate`; remove all of it on exit.

    Raises HostsUnavailable (with what to do) when hosts cannot be built here. SIGTERM and
    SIGHUP inside the block raise KeyboardInterrupt, so a killed benchmark cleans up as
    Ctrl-C does; the caller decides what an interrupt returns.
    """
    multihost.rate_bits(rate)  # argparse.ArgumentTypeError for a bad rate
    reason = netns.skip_reason()
    if reason is not None:
        raise HostsUnavailable(f"{what}: cannot build test hosts here: {reason}")
    if shutil.which("tc") is None:
        raise HostsUnavailable(f"{what}: tc is missing; try: apt-get install iproute2")
    old = {sig: signal.signal(sig, multihost._interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    before = set(segment.leftovers())
    workdir = Path(tempfile.mkdtemp(prefix=f"ringcomm-{what}-"))
    cluster = None
    try:
        cluster = netns.build(workdir / "hosts", count=count)
        multihost.shape(cluster, rate)
        print(f"{what}: hosts {', '.join(cluster.ips)} up, each link shaped to {rate}",
              file=sys.stderr, flush=True)
        yield cluster
    finally:
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            if cluster is not None:
                left = netns.teardown(cluster)
                if left:
                    print(f"{what}: could not remove {left}", file=sys.stderr)
            shutil.rmtree(workdir, ignore_errors=True)
            for name in _dead_segments(before):
                with contextlib.suppress(OSError):
                    os.unlink(f"/dev/shm/{name}")
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGINT, old_int)


def launch(cluster: netns.Cluster, program: list[str], timeout: float, per_host: int = 1,
           envs: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """Run `program` with `per_host` ranks on each of the first two hosts (ringcomm launch
    --hosts, over their ssh); return (exit code or None on timeout, stdout, stderr).

    Every rank gets PYTHONPATH=<this checkout>, one BLAS/OpenMP thread, and `envs`. Strays
    left on the hosts afterwards are named in stderr.
    """
    env = cluster.env()
    env["PYTHONPATH"] = str(REPO)
    env.pop("RINGCOMM_TIMEOUT", None)
    settings = {"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                **(envs or {})}
    argv = [sys.executable, "-m", "ringcomm", "launch", "--hosts", ",".join(cluster.ips[:2]),
            "-n", str(per_host), "--no-stdin", "--timeout", str(int(timeout))]
    for key, value in settings.items():
        argv += ["--env", f"{key}={value}"]
    (code, out, err), = peers.run_together([[*argv, "--", *program]], env, timeout + 30)
    strays = cluster.wait_no_strays(10.0)
    if strays:
        err += f"\nprocesses left on the hosts: {strays}"
    return code, out, err
