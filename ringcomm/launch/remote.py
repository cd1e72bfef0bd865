"""Remote ranks: the ssh command that starts a guard on another host.

The guard's stdin is the ssh channel, so when the launcher exits, is killed
with ``kill -9`` or loses the connection, ssh closes the channel, the remote
guard reads EOF and kills the rank's process group on that host. No pidfile
and no second ssh are needed to clean up.
"""

from __future__ import annotations

from ..hosts import ssh
from . import commands

__all__ = ["SSH_OPTIONS", "explain_ssh_failure", "ssh_guard_argv"]

# Keepalives turn a silently dead connection into an EOF for the remote guard
# and an exit of the local ssh, within about 15 seconds.
SSH_OPTIONS = ("ServerAliveInterval=5", "ServerAliveCountMax=3")


def ssh_guard_argv(host: str, python: str, *,
                   connect_timeout: float = ssh.DEFAULT_CONNECT_TIMEOUT) -> list[str]:
    """Return the ssh argv that starts a guard with ``python`` on ``host``."""
    return ssh.ssh_argv(host, commands.guard_argv(python), connect_timeout=connect_timeout,
                        options=SSH_OPTIONS)


def explain_ssh_failure(host: str, code: int, stderr_tail: tuple[str, ...],
                        python: str) -> str | None:
    """Return a reason and hint when a remote rank never started (ssh or python failed)."""
    if code == 127:
        return (f"{python!r} was not found on {host}; install the same python there "
                "or give its path with --python")
    if code != ssh.SSH_ERROR:
        return None
    result = ssh.Result(argv=(), returncode=code, stdout="", stderr="\n".join(stderr_tail),
                        timed_out=False, seconds=0.0)
    return ssh.explain(result, host)
