"""Turn a LaunchConfig into a JobPlan: hosts, local or remote, addresses, ports.

A job that another launcher (mpirun, srun) starts is described by a
`WrappedLaunch`: the one command ringcomm runs under a guard.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass, field

from .. import environment
from ..environment import rank_addresses
from ..hosts import ssh
from ..hosts.hostfile import HostEntry, load_hostfile
from .options import LaunchConfig, LaunchError, program_argv

__all__ = [
    "JobPlan",
    "RankSpec",
    "WrappedLaunch",
    "host_entries",
    "hostfile_vars",
    "is_local_host",
    "pick_free_ports",
    "plan_job",
    "rank_env",
    "resolve_host",
]


@dataclass(frozen=True)
class RankSpec:
    """One rank of the job: where it runs, how it is reached, what it runs."""

    rank: int
    host: str
    """The name ssh uses, or the local address for ranks on this machine."""
    local: bool
    addresses: tuple[str, ...]
    """This rank's ``"ip:port"`` entries in the rank hostfile."""


@dataclass
class JobPlan:
    """A launch turned concrete: ranks, program argv, shared environment."""

    config: LaunchConfig
    backend: str
    ranks: list[RankSpec]
    argv: list[str]
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    hostfile_envs: tuple[tuple[str, str], ...] = ()
    restart: int = 0
    """Which attempt this is under --max-restarts (RINGCOMM_RESTART)."""

    @property
    def size(self) -> int:
        """Return the number of ranks."""
        return len(self.ranks)

    def rank_hostfile(self) -> list[list[str]]:
        """Return the rank hostfile entries, one list of ``"ip:port"`` per rank."""
        return [list(r.addresses) for r in self.ranks]


@dataclass
class WrappedLaunch:
    """Ranks that another launcher starts: its command line and what every rank gets.

    That launcher places and numbers the ranks itself; ringcomm runs it as the
    job's one process.
    """

    tool: str
    """Its name in messages: ``mpirun`` or ``srun``."""
    argv: list[str]
    env: dict[str, str]
    """The variables every rank gets (passed on by the tool)."""
    ranks: int
    hostfile: str | None = None
    """The hostfile text the tool places ranks from (OpenMPI's ``host slots=N`` lines)."""


@dataclass(frozen=True)
class _HostSource:
    base: list[HostEntry]
    repeat: int
    backend: str | None
    envs: tuple[tuple[str, str], ...]

    @property
    def entries(self) -> list[HostEntry]:
        """Return one entry per rank: each base entry repeated."""
        return [h for h in self.base for _ in range(self.repeat)]


def host_entries(config: LaunchConfig) -> _HostSource:
    """Return the host entries of the job in rank order, each repeated ``-n`` times."""
    if config.hostfile is not None:
        hf = load_hostfile(config.hostfile)
        base, backend, envs = list(hf.hosts), hf.backend, hf.envs
    else:
        base, backend, envs = [], None, ()
        for name in config.hosts:
            name = name.strip()
            if not name:
                raise LaunchError(
                    f"--hosts has an empty name in {','.join(config.hosts)!r}; "
                    "expected comma-separated hosts like 'h1,h2'"
                )
            base.append(HostEntry(ssh=name))
    return _HostSource(base=base, repeat=config.repeat_hosts, backend=backend, envs=envs)


def resolve_host(name: str) -> str:
    """Return the address ``name`` resolves to, IPv4 first; raise LaunchError if none."""
    try:
        return ssh.resolve_ssh_host(name)[0]
    except OSError as e:
        raise LaunchError(
            f"{e}; give an ip in --hosts, or the ring ips in a --hostfile entry's 'ips'"
        ) from None


def is_local_host(name: str) -> bool:
    """Return True when ``name`` is this machine (loopback or one of its addresses)."""
    return ssh.is_local_host(name)


def pick_free_ports(ip: str, count: int) -> list[int]:
    """Return ``count`` distinct ports free on ``ip`` now, chosen by the OS."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            try:
                s.bind((ip, 0))
            except OSError as e:
                raise LaunchError(
                    f"cannot bind a port on {ip!r} ({e.strerror}); "
                    "check that the address belongs to this machine"
                ) from None
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _backend(config: LaunchConfig, from_hostfile: str | None) -> str:
    if config.backend is not None:
        return config.backend
    return from_hostfile if from_hostfile is not None else "ring"


def plan_job(config: LaunchConfig, restart: int = 0) -> JobPlan:
    """Return the concrete plan for ``config``: one RankSpec per rank."""
    source = host_entries(config)
    entries = source.entries
    backend = _backend(config, source.backend)
    per_ip = config.connections_per_ip
    names = list(dict.fromkeys(h.ssh for h in entries))
    local_of = {n: is_local_host(n) for n in names}
    local = [local_of[h.ssh] for h in entries]
    any_remote = not all(local)
    resolved: dict[str, str] = {}
    rank_ips: list[tuple[str, ...]] = []
    for entry, is_local in zip(entries, local):
        if entry.ips:
            rank_ips.append(entry.ips)
        elif is_local and not any_remote:
            rank_ips.append(("127.0.0.1",))
        else:
            if entry.ssh not in resolved:
                resolved[entry.ssh] = resolve_host(entry.ssh)
            rank_ips.append((resolved[entry.ssh],))
    if any_remote and any(ipaddress.ip_address(ips[0]).is_loopback
                          for ips, lo in zip(rank_ips, local) if lo):
        raise LaunchError(
            "a loopback host cannot be in a job with remote hosts: remote ranks "
            "could not reach it; use this machine's network address instead"
        )
    total = sum(len(ips) * per_ip for ips in rank_ips)
    if config.starting_port is not None:
        if config.starting_port + total > 65536:
            raise LaunchError(
                f"--starting-port {config.starting_port} leaves too few ports for "
                f"{total} connections; expected a port <= {65536 - total}"
            )
        next_port = config.starting_port
    else:
        next_port = 20000 + secrets.randbelow(30000)
    # All local ports of one ip come from one call, so they are distinct.
    local_need: dict[str, int] = {}
    for is_local, ips in zip(local, rank_ips):
        if is_local and config.starting_port is None:
            for ip in ips:
                local_need[ip] = local_need.get(ip, 0) + per_ip
    free = {ip: pick_free_ports(ip, n) for ip, n in local_need.items()}
    ranks = []
    for r, (entry, is_local, ips) in enumerate(zip(entries, local, rank_ips)):
        if config.starting_port is None and is_local:
            ports = []
            for ip in ips:
                ports += free[ip][:per_ip]
                del free[ip][:per_ip]
        else:
            n = len(ips) * per_ip
            ports = list(range(next_port, next_port + n))
            next_port += n
        host = ips[0] if is_local else entry.ssh
        ranks.append(RankSpec(rank=r, host=host, local=is_local,
                              addresses=addresses_for(ips, ports)))
    argv = program_argv(config.command, config.python_path, cwd=config.cwd,
                        must_exist=all(local))
    return JobPlan(config=config, backend=backend, ranks=ranks, argv=argv,
                   hostfile_envs=source.envs, restart=restart)


def rank_env(plan: JobPlan, spec: RankSpec | None) -> dict[str, str]:
    """Return the environment variables the launcher sets for one rank (ring and MPI modes).

    ``spec`` is None in MPI mode, where mpirun numbers the ranks: the rank
    variables are then left out. The hostfile variables are not here either:
    the guard writes the rank hostfile on the rank's own host and points
    ``RINGCOMM_HOSTFILE``/``MLX_HOSTFILE`` at it. Precedence, lowest first:
    the hostfile's ``envs``, the contract's variables, then ``--env``.
    """
    env: dict[str, str] = dict(plan.hostfile_envs)
    env.update(environment.launcher_vars(plan.backend, plan.token,
                                         None if spec is None else spec.rank))
    env[environment.RESTART] = str(plan.restart)
    config = plan.config
    if config.trace is not None:
        env[environment.TRACE] = str(config.trace.resolve())
    if config.verbose:
        env.setdefault(environment.LOG_LEVEL, "DEBUG")
    env.setdefault("PYTHONUNBUFFERED", os.environ.get("PYTHONUNBUFFERED", "1"))
    env.update(dict(plan.config.env))
    return env


def hostfile_vars() -> tuple[str, ...]:
    """Return the variables that point at the rank hostfile."""
    return environment.HOSTFILE_VARS


def addresses_for(ips: tuple[str, ...], ports: list[int]) -> tuple[str, ...]:
    """Return a rank's address tuple for ``ips`` and its ``ports``."""
    return tuple(rank_addresses(ips, ports))
