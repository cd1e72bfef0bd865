"""Start guarded ranks, forward their output and stdin, and stop them together.

Shutdown is "signal everyone, wait on one monotonic deadline, SIGKILL the
rest, wait": the launcher asks each guard to terminate (``T`` frame, then EOF
on its stdin); each guard SIGTERMs its rank's process group and SIGKILLs it
after the grace period; a guard still alive at the launcher's deadline is
killed together with its rank's group (its pid is known locally).
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from . import commands
from .options import LaunchError
from .output import Output

__all__ = ["Job", "JobResult", "RankExit", "RankProcess", "Reason", "signal_name"]

_TAIL_LINES = 20


def signal_name(signum: int) -> str:
    """Return ``SIGSEGV`` style name for ``signum``, or ``signal N``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@dataclass(frozen=True)
class RankExit:
    """How one rank ended."""

    rank: int
    host: str
    pid: int | None
    code: int
    """The exit code the launcher reports: the rank's, or 128+N for signal N."""
    signal: int | None = None
    stderr_tail: tuple[str, ...] = ()
    stopped: bool = False
    local: bool = True
    """True when the launcher stopped this rank (another failed, timeout, interrupt)."""

    def describe(self) -> str:
        """Return 'exit code 3' or 'killed by SIGSEGV (exit code 139)'."""
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)} (exit code {self.code})"
        return f"exit code {self.code}"


class Reason:
    """Why a job ended."""

    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


@dataclass
class JobResult:
    """The outcome of a job: its exit code and what ended it."""

    exit_code: int
    reason: str
    first_failure: RankExit | None = None
    exits: list[RankExit] = field(default_factory=list)


@dataclass
class RankProcess:
    """What to start for one rank: the guard command and its first bytes."""

    rank: int
    host: str
    local: bool
    argv: list[str]
    preamble: bytes
    """Guard source and start frame, written to the guard's stdin first."""


class _Handle:
    def __init__(self, spec: RankProcess, proc: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.proc = proc
        self.lock = threading.Lock()
        self.readers: list[threading.Thread] = []
        self.tail: collections.deque[bytes] = collections.deque(maxlen=_TAIL_LINES)
        self.rank_pid: int | None = None
        self.signal: int | None = None
        self.exited: RankExit | None = None
        self.stopped = False

    def send(self, data: bytes, close: bool = False) -> None:
        with self.lock:
            stdin = self.proc.stdin
            if stdin is None or stdin.closed:
                return
            try:
                if data:
                    stdin.write(data)
                    stdin.flush()
                if close:
                    stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                try:
                    stdin.close()
                except (BrokenPipeError, OSError, ValueError):
                    pass


class Job:
    """A running set of guarded ranks, supervised until all end."""

    def __init__(self, ranks: list[RankProcess], output: Output, *, grace: float = 3.0,
                 timeout: float | None = None, forward_stdin: bool = True) -> None:
        self.ranks = ranks
        self.output = output
        self.grace = grace
        self.timeout = timeout
        self.forward_stdin = forward_stdin
        self.events: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.handles: list[_Handle] = []

    # -- starting -------------------------------------------------------

    def _start(self, spec: RankProcess) -> _Handle:
        proc = subprocess.Popen(
            spec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        h = _Handle(spec, proc)
        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")):
            t = threading.Thread(target=self._read, args=(h, stream, name), daemon=True)
            t.start()
            h.readers.append(t)
        threading.Thread(target=self._wait, args=(h,), daemon=True).start()
        h.send(spec.preamble)
        return h

    def _read(self, h: _Handle, stream: IO[bytes], name: str) -> None:
        for line in iter(lambda: stream.readline(65536), b""):
            if name == "stderr":
                at = line.find(commands.MARK)
                if at >= 0:
                    self._marker(h, line[at + len(commands.MARK):])
                    line = line[:at]
                    if not line:
                        continue
                h.tail.append(line)
            self.output.write(h.spec.rank, name, line)
        stream.close()

    def _marker(self, h: _Handle, text: bytes) -> None:
        key, _, value = text.strip().decode(errors="replace").partition("=")
        if key == "pid" and value.isdigit():
            h.rank_pid = int(value)
        elif key == "signal" and value.isdigit():
            h.signal = int(value)

    def _wait(self, h: _Handle) -> None:
        h.proc.wait()
        self.events.put(("exit", h))

    def _forward_stdin(self) -> None:
        try:
            while True:
                data = os.read(0, 65536)
                if not data:
                    break
                for h in self.handles:
                    h.send(commands.frame(commands.STDIN_DATA, data))
        except OSError:
            pass
        for h in self.handles:
            h.send(commands.frame(commands.STDIN_EOF))

    def _stdin_usable(self) -> bool:
        try:
            os.fstat(0)
        except OSError:
            return False
        # Reading a terminal from a background job would stop the launcher.
        if os.isatty(0):
            try:
                return os.tcgetpgrp(0) == os.getpgrp()
            except OSError:
                return False
        return True

    # -- running --------------------------------------------------------

    def _finish(self, h: _Handle) -> RankExit:
        for t in h.readers:
            t.join(timeout=2.0)
        code = h.proc.returncode
        sig = h.signal
        if code is not None and code < 0:  # the guard itself was killed
            sig = -code
            code = 128 + sig
        h.exited = RankExit(rank=h.spec.rank, host=h.spec.host, pid=h.rank_pid,
                            code=code, signal=sig,
                            stderr_tail=tuple(b.decode(errors="replace").rstrip("\n")
                                              for b in h.tail),
                            stopped=h.stopped, local=h.spec.local)
        return h.exited

    def _on_signal(self, signum: int, frame: object) -> None:
        self.events.put(("signal", signum))

    def run(self) -> JobResult:
        """Start every rank and supervise them; return how the job ended."""
        main = threading.current_thread() is threading.main_thread()
        saved = {}
        if main:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                saved[sig] = signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            for sig, old in saved.items():
                signal.signal(sig, old)
            self.output.close()

    def _run(self) -> JobResult:
        start = time.monotonic()
        deadline = None if self.timeout is None else start + self.timeout
        # Decided before any pipe exists: with fd 0 closed, a new pipe could take fd 0.
        stdin_ok = self.forward_stdin and self._stdin_usable()
        try:
            for spec in self.ranks:
                self.handles.append(self._start(spec))
        except OSError as e:
            self._shutdown()
            n = len(self.handles)
            raise LaunchError(
                f"cannot start the guard of rank {n} ({self.ranks[n].argv[0]!r}): "
                f"{e.strerror}; check --python"
            ) from e
        if stdin_ok:
            threading.Thread(target=self._forward_stdin, daemon=True).start()
        else:
            for h in self.handles:
                h.send(commands.frame(commands.STDIN_EOF))
        live = len(self.handles)
        while live:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                kind, value = self.events.get(timeout=wait)
            except queue.Empty:
                self._shutdown()
                return JobResult(124, Reason.TIMEOUT, None, self._exits())
            if kind == "signal":
                assert isinstance(value, int)
                self._shutdown()
                return JobResult(128 + value, Reason.INTERRUPTED, None, self._exits())
            assert isinstance(value, _Handle)
            live -= 1
            ex = self._finish(value)
            if ex.code != 0:
                self._shutdown()
                return JobResult(ex.code, Reason.FAILED, ex, self._exits())
        return JobResult(0, Reason.DONE, None, self._exits())

    def _exits(self) -> list[RankExit]:
        return [h.exited for h in self.handles if h.exited is not None]

    # -- stopping -------------------------------------------------------

    def _shutdown(self) -> None:
        """Stop every live rank: TERM frame + EOF, one deadline, then SIGKILL."""
        live = [h for h in self.handles if h.exited is None]
        for h in live:
            h.stopped = True
            h.send(commands.frame(commands.TERMINATE), close=True)
        deadline = time.monotonic() + self.grace + 2.0
        pending = {id(h): h for h in live}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                kind, value = self.events.get(timeout=left)
            except queue.Empty:
                break
            if kind == "signal":
                break  # a second interrupt: kill now
            assert isinstance(value, _Handle)
            if pending.pop(id(value), None) is not None:
                self._finish(value)
        for h in pending.values():
            self._kill(h)
        for h in pending.values():
            try:
                h.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
            if h.proc.returncode is not None:
                self._finish(h)

    def _kill(self, h: _Handle) -> None:
        if h.spec.local and h.rank_pid is not None:
            try:
                os.killpg(h.rank_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.killpg(h.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

