"""The launch configuration and the per-job plan built from it."""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import backends

__all__ = [
    "LaunchConfig",
    "LaunchError",
    "program_argv",
]


class LaunchError(RuntimeError):
    """The job could not be planned or started (bad program, host, port, tool)."""


@dataclass
class LaunchConfig:
    """Everything ``ringcomm launch`` was asked to do."""

    command: list[str]
    """The program and its arguments; ``["-m", "mod", ...]`` runs a module."""
    hosts: tuple[str, ...] = ("127.0.0.1",)
    repeat_hosts: int = 1
    hostfile: Path | None = None
    backend: str | None = None
    """A registered backend name (``ringcomm.backends.names()``); None: the hostfile's, else ring."""
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
    trace: Path | None = None
    """Where ranks write their timelines (RINGCOMM_TRACE); the launcher merges them."""
    max_restarts: int = 0
    launcher: str = "ssh"
    """"ssh" (local processes and ssh) or "srun" (a Slurm step in the current allocation)."""

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
        if self.backend is not None and self.backend not in backends.names():
            raise LaunchError(f"expected --backend in {', '.join(backends.names())}, "
                              f"got {self.backend!r}")
        if self.max_restarts < 0:
            raise LaunchError(f"expected --max-restarts >= 0, got {self.max_restarts}")
        if self.launcher not in ("ssh", "srun"):
            raise LaunchError(f"expected --launcher ssh or srun, got {self.launcher!r}")
        if self.grace < 0:
            raise LaunchError(f"expected a grace period >= 0 seconds, got {self.grace}")

    @property
    def python_path(self) -> str:
        """Return the interpreter the ranks (and their guards) run with."""
        return self.python or sys.executable


# A Python interpreter by a bare name: python, python3, python3.11.
_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?")


def program_argv(command: list[str], python: str, *, cwd: str | None = None,
                 must_exist: bool = True) -> list[str]:
    """Return the argv that runs ``command``: scripts and ``-m`` with ``python``.

    A ``.py`` script found relative to ``cwd`` (or the current directory) is
    made absolute, so that remote ranks find it at the same path; with
    ``must_exist`` a missing script is an error. A Python interpreter named
    by a bare name (``python``, ``python3``, ``python3.11``) means ``python``:
    on a remote host that name would find the system's interpreter, not the
    one the job was launched from (as in MLX, the interpreter must be at the
    same path on every host). Another bare name found on this machine's PATH
    becomes its absolute path.
    """
    if not command:
        raise LaunchError("no program given")
    first, rest = command[0], list(command[1:])
    if _PYTHON_NAME.fullmatch(first):
        if not rest:
            raise LaunchError(f"{first} needs a script or -m MODULE, e.g. "
                              f"'ringcomm launch -n 2 {first} train.py'")
        return program_argv(rest, python, cwd=cwd, must_exist=must_exist) \
            if rest[0] == "-m" or rest[0].endswith(".py") else [python, *rest]
    if "/" not in first and not first.endswith(".py"):
        found = shutil.which(first)
        if found is not None:
            first = found
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
