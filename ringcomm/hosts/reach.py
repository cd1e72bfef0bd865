"""Run the probes of ``_probe`` on hosts: bind listeners, then connect to them.

Shared by ``ringcomm check`` and ``ringcomm config``. A host that is this
machine runs the probe directly; any other runs it over ssh.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from .. import environment
from . import probe, ssh

__all__ = ["Listener", "Runner", "connect_from"]


@dataclass(frozen=True)
class Runner:
    """How to run a python probe on one host: directly when local, else over ssh."""

    host: str
    local: bool
    python: str
    cwd: str | None = None
    connect_timeout: float = ssh.DEFAULT_CONNECT_TIMEOUT
    timeout: float = 20.0
    ssh_options: tuple[str, ...] = ()

    def argv(self, argv: Sequence[str]) -> tuple[list[str], str | None]:
        """Return the argv that runs ``argv`` on the host and the local cwd to run it in."""
        if self.local:
            return list(argv), self.cwd
        return ssh.ssh_argv(self.host, argv, connect_timeout=self.connect_timeout, cwd=self.cwd,
                            options=self.ssh_options), None

    def run(self, argv: Sequence[str], extra_seconds: float = 0.0) -> ssh.Result:
        """Run ``argv`` on the host within connect_timeout + timeout (+ extra) seconds."""
        full, cwd = self.argv(argv)
        return ssh.run(full, self.connect_timeout + self.timeout + extra_seconds, cwd=cwd)


class Listener:
    """A LISTEN probe bound on one host until closed."""

    def __init__(self, runner: Runner, specs: Sequence[str]) -> None:
        self.runner, self.specs = runner, list(specs)
        argv, cwd = runner.argv([runner.python, "-c", probe.LISTEN, str(runner.timeout * 2),
                                 *specs])
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=cwd,
                                     start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def result(self, deadline: float) -> list[dict] | str:
        """Return one ``{"spec", "port", "error"}`` per address, or why none came in time."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return "the listener probe did not answer before the deadline"
            if line is None:
                return f"the listener probe exited {self.proc.wait(timeout=5)}"
            if line.startswith("RINGCOMM-LISTEN "):
                return list(probe.parse_tagged(line, "LISTEN"))

    def close(self) -> None:
        """End the listener: EOF on its stdin, then its process group after a grace."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=5)


def bound_address(entry: dict) -> str:
    """Return the ``ip:port`` a listener result entry is bound to."""
    host = str(entry["spec"]).rpartition(":")[0].strip("[]")  # the spec's port may be 0: any
    return environment.format_address(host, int(entry["port"]))


def connect_from(runner: Runner, addrs: Sequence[str], per_probe: float = 5.0
                 ) -> dict[str, str | None]:
    """Connect from the runner's host to each ``ip:port``; return an error or None for each."""
    addrs = sorted(set(addrs))
    try:
        res = runner.run([runner.python, "-c", probe.CONNECT, str(per_probe), *addrs],
                         extra_seconds=per_probe)
        got = probe.parse_tagged(res.stdout, "CONNECT")
    except (OSError, ValueError) as e:
        return {a: f"the connect probe failed: {e}" for a in addrs}
    errors: dict[str, str | None] = {a: "no result" for a in addrs}
    errors.update({g["spec"]: g["error"] for g in got})
    return errors
