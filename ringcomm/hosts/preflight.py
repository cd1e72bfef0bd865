"""The ``ringcomm check`` preflight: the remote-host checklist, automated.

For every host, in parallel and each step with a deadline: ssh logs in
without a prompt; the python at the same path runs and imports the same
ringcomm version; the program exists at the same path; ``mpirun`` is there
for the mpi backend. Then every rank's ring address is bound on its host and
connected to from its ring predecessor's host, which gives the reachability
matrix. Hosts that are this machine are probed without ssh.

:func:`run_checks` is the Python API (``ringcomm launch --check`` uses it);
:func:`main` is the command line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import backends, environment
from . import probe, reach, ssh
from .hostfile import HostEntry
from .report import Finding, Link, Report, Status, bind_hint, format_report

__all__ = [
    "Finding",
    "Link",
    "RankTarget",
    "Report",
    "Status",
    "format_report",
    "run_checks",
]


@dataclass(frozen=True)
class RankTarget:
    """One rank as the check sees it: its host and the ring addresses it listens on."""

    rank: int
    host: str
    addresses: tuple[str, ...]


@dataclass
class _Host:
    runner: reach.Runner
    ready: bool = False
    """ssh works and the python ran: the ring probes can run here."""
    findings: list[Finding] = field(default_factory=list)


def _local_version() -> str:
    from .. import __version__
    return str(__version__)


def plan_ranks(hosts: Sequence[HostEntry], repeat: int, starting_port: int | None,
               connect_timeout: float) -> tuple[list[RankTarget], list[Finding]]:
    """Return the ranks (host repeated ``repeat`` times) with their ring addresses."""
    ranks: list[RankTarget] = []
    findings: list[Finding] = []
    for entry in hosts:
        ips = list(entry.ips)
        if not ips:
            try:
                ips = ssh.resolve_ssh_host(entry.ssh, timeout=connect_timeout)[:1]
            except OSError as e:
                findings.append(Finding(entry.ssh, "address", Status.FAIL, str(e),
                                        "list its ip in a hostfile's \"ips\""))
        for _ in range(repeat):
            r = len(ranks)
            port = 0 if starting_port is None else starting_port + r
            ranks.append(RankTarget(r, entry.ssh, tuple(environment.format_address(ip, port) for ip in ips)))
    return ranks, findings


def _env_findings(host: _Host, res: ssh.Result | None, err: str, program: str | None,
                  backend: str) -> None:
    add = host.findings.append
    opts = host.runner
    name = opts.host
    info = None
    if res is not None:
        try:
            info = probe.parse_tagged(res.stdout, "ENV")
        except (probe.ProbeParseError, ValueError):
            info = None
    ssh_failed = res is not None and not opts.local and info is None and (
        res.returncode == ssh.SSH_ERROR or res.timed_out)
    if ssh_failed and res is not None:
        add(Finding(name, "ssh", Status.FAIL, ssh.explain(res, name)))
        return
    add(Finding(name, "ssh", Status.OK, "local" if opts.local else "ok"))
    if not isinstance(info, dict):
        detail = err
        if res is not None:
            detail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        if res is not None and res.timed_out:
            detail = f"python did not finish within {opts.timeout:g}s"
        if opts.cwd and ("cd:" in detail or "can't cd" in detail):
            add(Finding(name, "python", Status.FAIL, f"cannot enter {opts.cwd!r}: {detail}",
                        "create the directory there or pass --cwd"))
        else:
            add(Finding(name, "python", Status.FAIL, f"{opts.python} does not run: {detail}",
                        "install the same python at the same path, or pass --python"))
        return
    host.ready = True
    add(Finding(name, "python", Status.OK, str(info.get("python"))))
    expected = _local_version()
    if info.get("error"):
        add(Finding(name, "ringcomm", Status.FAIL, f"import failed: {info['error']}",
                    f"pip install ringcomm=={expected} with {opts.python}, or --cwd a shared "
                    f"checkout"))
    elif info.get("version") != expected:
        add(Finding(name, "ringcomm", Status.FAIL,
                    f"version: expected {expected}, got {info.get('version')}",
                    f"pip install ringcomm=={expected} with {opts.python}"))
    else:
        add(Finding(name, "ringcomm", Status.OK, expected))
    if program is None:
        add(Finding(name, "script", Status.SKIP, "no program given"))
    elif info.get("script"):
        add(Finding(name, "script", Status.OK, program))
    else:
        add(Finding(name, "script", Status.FAIL, f"{program} not found",
                    "copy it to the same path there, or use a shared filesystem"))
    mpirun = info.get("mpirun")
    if backend != "mpi":
        add(Finding(name, "mpirun", Status.SKIP, str(mpirun or "not needed")))
    elif mpirun:
        add(Finding(name, "mpirun", Status.OK, str(mpirun)))
    else:
        add(Finding(name, "mpirun", Status.FAIL, "mpirun not found on PATH",
                    'pip install "ringcomm[mpi]" with that python, or apt-get install openmpi-bin'))


def _probe_env(host: _Host, program: str | None, backend: str) -> None:
    res, err = None, ""
    runner = host.runner
    if runner.local and runner.cwd and not os.path.isdir(runner.cwd):
        err = f"cd: {runner.cwd}: no such directory"
    else:
        try:
            res = runner.run([runner.python, "-c", probe.ENV, program or ""])
        except OSError as e:
            err = f"{e.strerror or e}: {e.filename or runner.python}"
    _env_findings(host, res, err, program, backend)


def _check_ring(hosts: dict[str, _Host], ranks: list[RankTarget]) -> list[Link]:
    by_host: dict[str, list[str]] = {}
    for r in ranks:
        if hosts[r.host].ready:
            by_host.setdefault(r.host, []).extend(r.addresses)
    listeners = {name: reach.Listener(hosts[name].runner, specs)
                 for name, specs in by_host.items() if specs}
    try:
        bound: dict[str, str] = {}
        for name, lst in listeners.items():
            opts = hosts[name].runner
            got = lst.result(time.monotonic() + opts.connect_timeout + opts.timeout)
            if isinstance(got, str):
                hosts[name].findings.append(Finding(name, "bind", Status.FAIL, got,
                                                    f"try: ssh {name} {opts.python} -V"))
                continue
            bad = [g for g in got if g["error"]]
            bound.update({g["spec"]: reach.bound_address(g) for g in got if not g["error"]})
            hosts[name].findings.append(
                Finding(name, "bind", Status.FAIL,
                        "; ".join(f"cannot bind {g['spec']}: {g['error']}" for g in bad),
                        bind_hint(bad[0]["error"], name)) if bad else
                Finding(name, "bind", Status.OK, f"{len(got)} address(es)"))
        return _connect_ring(hosts, ranks, bound)
    finally:
        for lst in listeners.values():
            lst.close()


def _connect_ring(hosts: dict[str, _Host], ranks: list[RankTarget], bound: dict[str, str]
                  ) -> list[Link]:
    """Connect from each rank's host to its ring successor's bound addresses."""
    if len(ranks) < 2:
        return []
    wanted: dict[str, list[tuple[int, int, str]]] = {}
    for src in ranks:
        dst = ranks[(src.rank + 1) % len(ranks)]
        if hosts[src.host].ready:
            wanted.setdefault(src.host, []).extend(
                (src.rank, dst.rank, bound[spec]) for spec in dst.addresses if spec in bound)

    def connect(name: str) -> list[Link]:
        runner = hosts[name].runner
        errors = reach.connect_from(runner, [a for _, _, a in wanted[name]],
                                     min(runner.connect_timeout, 5.0))
        return [Link(s, d, name, ranks[d].host, a, errors[a]) for s, d, a in wanted[name]]

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(wanted)))) as pool:
        return [link for links in pool.map(connect, list(wanted)) for link in links]


def run_checks(hosts: Sequence[HostEntry], *, repeat: int = 1, program: str | None = None,
               python: str | None = None, backend: str = "ring", starting_port: int | None = None,
               cwd: str | None = None, connect_timeout: float = ssh.DEFAULT_CONNECT_TIMEOUT,
               timeout: float = 20.0, ssh_options: Sequence[str] = ()) -> Report:
    """Check every host for a job of ``repeat`` ranks per host and return the report.

    ``program`` is made absolute against ``cwd`` (default: the current
    directory), which is also where the remote probes run.
    """
    if repeat < 1:
        raise ValueError(f"expected repeat >= 1, got {repeat}")
    if backend not in backends.names():
        raise ValueError(f"expected backend in {backends.names()}, got {backend!r}")
    if not hosts:
        raise ValueError("expected at least one host, got none")
    start = time.monotonic()
    cwd = cwd or os.getcwd()
    if program is not None:
        program = os.path.join(cwd, program)
    names = list(dict.fromkeys(h.ssh for h in hosts))
    by_name = {n: _Host(reach.Runner(
        n, ssh.is_local_host(n, timeout=connect_timeout), python or sys.executable, cwd,
        connect_timeout, timeout, tuple(ssh_options))) for n in names}
    ranks, findings = plan_ranks(hosts, repeat, starting_port, connect_timeout)
    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        list(pool.map(lambda h: _probe_env(h, program, backend), by_name.values()))
    links = _check_ring(by_name, ranks) if backend == "ring" else []
    for h in by_name.values():
        findings.extend(h.findings)
    return Report(hosts=names, ranks=len(ranks), findings=findings, links=links,
                  seconds=time.monotonic() - start)
