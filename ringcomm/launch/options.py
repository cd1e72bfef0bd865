"""The launch configuration and the per-job plan built from it."""

from __future__ import annotations

import enum
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import environment
from ..hosts.hostfile import rank_addresses

__all__ = [
    "Backend",
    "JobPlan",
    "LaunchConfig",
    "LaunchError",
    "RankSpec",
    "program_argv",
    "rank_env",
]


class LaunchError(RuntimeError):
    """The job could not be planned or started (bad program, host, port, tool)."""


class Backend(enum.Enum):
    """Which backend the ranks are told to use."""

    RING = "ring"
    MPI = "mpi"


@dataclass
class LaunchConfig:
    """Everything ``ringcomm launch`` was asked to do."""

    command: list[str]
    """The program and its arguments; ``["-m", "mod", ...]`` runs a module."""
    hosts: tuple[str, ...] = ("127.0.0.1",)
    repeat_hosts: int = 1
    hostfile: Path | None = None
    backend: Backend | None = None
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    python: str | None = None
    starting_port: int | None = None
    connections_per_ip: int = 1
    mpi_args: tuple[str, ...] = ()
    verbose: bool = False
    tag_output: bool = False
    output_dir: Path | None = None
    timeout: float | None = None
    dry_run: bool = False
    check: bool = False
    forward_stdin: bool = True
    grace: float = 3.0
    """Seconds between SIGTERM and SIGKILL when ranks are stopped."""

    def __post_init__(self) -> None:
        if not self.command:
            raise LaunchError("no program given; expected e.g. 'ringcomm launch -n 2 script.py'")
        if self.repeat_hosts < 1:
            raise LaunchError(f"expected -n/--repeat-hosts >= 1, got {self.repeat_hosts}")
        if self.connections_per_ip < 1:
            raise LaunchError(
                f"expected --connections-per-ip >= 1, got {self.connections_per_ip}"
            )
        if self.starting_port is not None and not 0 < self.starting_port < 65536:
            raise LaunchError(f"expected a port in 1..65535, got {self.starting_port}")
        if self.timeout is not None and self.timeout <= 0:
            raise LaunchError(f"expected --timeout > 0 seconds, got {self.timeout}")
        if self.grace < 0:
            raise LaunchError(f"expected a grace period >= 0 seconds, got {self.grace}")

    @property
    def python_path(self) -> str:
        """Return the interpreter the ranks (and their guards) run with."""
        return self.python or sys.executable


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
    backend: Backend
    ranks: list[RankSpec]
    argv: list[str]
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    hostfile_envs: tuple[tuple[str, str], ...] = ()

    @property
    def size(self) -> int:
        """Return the number of ranks."""
        return len(self.ranks)

    def rank_hostfile(self) -> list[list[str]]:
        """Return the rank hostfile entries, one list of ``"ip:port"`` per rank."""
        return [list(r.addresses) for r in self.ranks]


def program_argv(command: list[str], python: str, *, cwd: str | None = None,
                 must_exist: bool = True) -> list[str]:
    """Return the argv that runs ``command``: scripts and ``-m`` with ``python``.

    A ``.py`` script found relative to ``cwd`` (or the current directory) is
    made absolute, so that remote ranks find it at the same path; with
    ``must_exist`` a missing script is an error.
    """
    if not command:
        raise LaunchError("no program given")
    first, rest = command[0], list(command[1:])
    if first == "-m":
        if not rest:
            raise LaunchError("-m needs a module name, e.g. 'ringcomm launch -n 2 -m pkg.mod'")
        return [python, "-m", *rest]
    if first.endswith(".py"):
        path = Path(first)
        base = Path(cwd) if cwd else Path.cwd()
        full = path if path.is_absolute() else base / path
        if full.is_file():
            first = str(full.resolve())
        elif must_exist:
            raise LaunchError(
                f"script {first!r} not found in {str(base)!r}; check the path or --cwd"
            )
        return [python, first, *rest]
    return [first, *rest]


def rank_env(plan: JobPlan, spec: RankSpec) -> dict[str, str]:
    """Return the environment variables the launcher sets for one rank.

    The hostfile variables are not here: the guard writes the rank hostfile
    on the rank's own host and points ``RINGCOMM_HOSTFILE``/``MLX_HOSTFILE``
    at it.
    """
    env: dict[str, str] = {}
    env.update(dict(plan.hostfile_envs))
    env.update({
        environment.RANK: str(spec.rank),
        environment.MLX_RANK: str(spec.rank),
        environment.BACKEND: plan.backend.value,
        environment.TOKEN: plan.token,
    })
    timeout = os.environ.get(environment.TIMEOUT)
    if timeout is not None:
        env[environment.TIMEOUT] = timeout
    env.setdefault("PYTHONUNBUFFERED", os.environ.get("PYTHONUNBUFFERED", "1"))
    env.update(dict(plan.config.env))
    return env


def hostfile_vars() -> tuple[str, ...]:
    """Return the variables that point at the rank hostfile."""
    return (environment.HOSTFILE, environment.MLX_HOSTFILE)


def addresses_for(ips: tuple[str, ...], ports: list[int]) -> tuple[str, ...]:
    """Return a rank's address tuple for ``ips`` and its ``ports``."""
    return tuple(rank_addresses(ips, ports))
