"""Run commands on other hosts through the system ``ssh``.

The system client is used so that users' ``~/.ssh/config``, agents and jump
hosts work. Command lines are built by pure functions that return lists;
:func:`run` is the only function here that starts a process, and it always
has a deadline.

- :func:`ssh_argv` builds ``ssh -o BatchMode=yes -o ConnectTimeout=N ... host
  'quoted remote command'``; BatchMode makes a missing key an error instead of
  a password prompt that hangs.
- :func:`remote_command` quotes an argv (with optional ``cd`` and environment)
  for the remote login shell.
- :func:`is_local_host` tells whether a host is this machine, which then runs
  without ssh.
- :func:`run` runs an argv with a hard deadline and kills its whole process
  group when the deadline passes.
- :func:`explain` turns an ssh failure into a short reason and a hint.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "SSH_ERROR",
    "Result",
    "explain",
    "is_local_host",
    "remote_command",
    "resolve_host",
    "resolve_ssh_host",
    "run",
    "ssh_argv",
    "ssh_config_hostname",
]

# Seconds ssh may spend establishing a connection (ssh's ConnectTimeout).
DEFAULT_CONNECT_TIMEOUT = 5.0
# ssh exits with this code for its own errors (connection, authentication).
SSH_ERROR = 255

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Result:
    """The outcome of :func:`run`: exit code, output, and whether the deadline hit."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """Return whether the command finished in time with exit code 0."""
        return self.returncode == 0 and not self.timed_out


def _check_host(host: str) -> None:
    if not host or host.startswith("-") or any(c.isspace() for c in host):
        raise ValueError(f"invalid ssh host {host!r}: expected a hostname or address")


def remote_command(argv: Sequence[str], *, cwd: str | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """Return one shell command line that runs ``argv`` remotely, every word quoted."""
    if not argv:
        raise ValueError("empty remote command: expected at least a program")
    words: list[str] = []
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        words.append(f"{key}={value}")
    cmd = shlex.join(["exec", "env", *words, *argv] if words else ["exec", *argv])
    if cwd is not None:
        return f"cd {shlex.quote(cwd)} && {cmd}"
    return cmd


def ssh_argv(host: str, remote_argv: Sequence[str], *,
             connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, port: int | None = None,
             user: str | None = None, options: Sequence[str] = (), cwd: str | None = None,
             env: Mapping[str, str] | None = None, ssh: str = "ssh") -> list[str]:
    """Return the ssh command line that runs ``remote_argv`` on ``host``.

    ``options`` are extra ``-o`` values (``"ServerAliveInterval=5"``); ``cwd``
    and ``env`` are applied on the remote side by :func:`remote_command`.
    """
    _check_host(host)
    argv = [ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, math.ceil(connect_timeout))}"]
    if port is not None:
        argv += ["-p", str(port)]
    if user is not None:
        argv += ["-l", user]
    for opt in options:
        argv += ["-o", opt]
    argv += ["--", host, remote_command(remote_argv, cwd=cwd, env=env)]
    return argv


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_own_address(addr: str) -> bool:
    """Return whether ``addr`` belongs to an interface of this machine (bind succeeds)."""
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


def resolve_host(host: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> list[str]:
    """Return the addresses ``host`` resolves to, IPv4 first; raise OSError when none."""
    host = _strip_brackets(host)
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    found: list[list[str]] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            addrs = [str(info[4][0]) for info in infos]
            found.append(sorted(dict.fromkeys(addrs), key=lambda a: ":" in a))
        except OSError as e:
            failure.append(e)

    # getaddrinfo has no timeout of its own; a daemon thread bounds the wait.
    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    if found:
        return found[0]
    if failure:
        raise OSError(f"cannot resolve host {host!r}: {failure[0]}; "
                      f"hint: check the name, /etc/hosts or DNS")
    raise OSError(f"cannot resolve host {host!r}: no answer within {timeout:g}s; hint: check DNS")


def ssh_config_hostname(name: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT,
                        ssh: str = "ssh") -> str | None:
    """Return the HostName ``ssh -G`` gives for ``name`` (an alias's real host), or None."""
    try:
        result = run([ssh, "-G", "--", name], timeout=timeout)
    except OSError:
        return None
    if not result.ok:
        return None
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value.strip():
            return value.strip()
    return None


def resolve_ssh_host(name: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> list[str]:
    """Return the addresses of an ssh destination (``user@host`` or a ~/.ssh/config alias)."""
    host = name.rpartition("@")[2]
    try:
        return resolve_host(host, timeout=timeout)
    except OSError:
        real = ssh_config_hostname(name, timeout=timeout)
        if real is None or real == host:
            raise
        return resolve_host(real, timeout=timeout)


def is_local_host(host: str, *, timeout: float = DEFAULT_CONNECT_TIMEOUT) -> bool:
    """Return whether ``host`` is this machine (loopback or one of its addresses)."""
    name = _strip_brackets(host)
    if "@" in name:
        name = name.rsplit("@", 1)[1]
    if name.lower() in _LOCAL_NAMES:
        return True
    try:
        addrs = resolve_host(name, timeout=timeout)
    except OSError:
        return False
    return any(_is_own_address(a) for a in addrs)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run(argv: Sequence[str], timeout: float, *, input: str | None = None,
        env: Mapping[str, str] | None = None, cwd: str | None = None) -> Result:
    """Run ``argv`` with a hard deadline; past it, kill its process group.

    The process starts in its own session, so the kill reaches everything it
    started that did not leave the group. Raises ``FileNotFoundError`` when
    the program does not exist.
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=2.0)
        except subprocess.TimeoutExpired:
            # A grandchild that left the group still holds the pipes; stop reading.
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait(timeout=2.0)
            out, err = "", ""
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return Result(argv=tuple(argv), returncode=proc.returncode, stdout=out or "",
                  stderr=err or "", timed_out=timed_out, seconds=time.monotonic() - start)


_HINTS: tuple[tuple[str, str, str], ...] = (
    ("permission denied", "ssh refused the login",
     "set up password-less ssh: ssh-copy-id HOST, or add your key to ~/.ssh/authorized_keys"),
    ("host key verification failed", "the host key is unknown or changed",
     "connect once with `ssh HOST` to accept the key, or add it with ssh-keyscan"),
    ("could not resolve hostname", "the host name does not resolve",
     "check the name, /etc/hosts or DNS"),
    ("connection timed out", "the connection timed out",
     "check that the host is up and that a firewall lets port 22 through"),
    ("no route to host", "there is no route to the host",
     "check the address and that the host is up on that network"),
    ("connection refused", "the host refused the connection",
     "check that sshd runs on the host (and on which port)"),
    ("network is unreachable", "the network is unreachable",
     "check the address and this machine's routes"),
)


def explain(result: Result, host: str) -> str:
    """Return a one-line reason for a failed ssh ``result`` to ``host``, with a hint."""
    if result.timed_out:
        return (f"ssh to {host} did not finish within {result.seconds:.0f}s; "
                f"hint: check that the host is up and that ssh needs no prompt")
    text = result.stderr.lower()
    for needle, what, hint in _HINTS:
        if needle in text:
            return f"ssh to {host}: {what}; hint: {hint.replace('HOST', host)}"
    last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
    return f"ssh to {host} exited {result.returncode}: {last}"
