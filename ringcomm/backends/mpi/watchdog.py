"""Deadlines for calls that cannot be interrupted: a watchdog that aborts the job.

MPI calls block in C and ignore signals and socket shutdowns alike, so the
MPI backend's deadline is a thread that, when one call outlives it, writes
what was stuck and aborts the MPI job.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import PeerError

__all__ = ["CallDeadline", "Watchdog"]


class Watchdog:
    """Abort the MPI job when one call outlives its deadline: MPI calls cannot be interrupted."""

    def __init__(self, abort: Callable[[], None]) -> None:
        self._abort = abort
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._what: tuple[Any, ...] = ()
        self._idle = False
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, what: tuple[Any, ...]) -> None:
        """Start the clock of one call; `what` describes it if the deadline passes."""
        # Lock-free unless the thread sleeps without a deadline: the thread sets
        # _idle before it reads _deadline (both under the GIL and its lock), so
        # either it sees this deadline or this sees _idle and wakes it.
        self._what = what
        self._deadline = time.monotonic() + seconds
        if self._thread is None or self._idle:
            with self._cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True,
                                                    name="ringcomm-mpi-watchdog")
                    self._thread.start()
                self._cond.notify()

    def disarm(self) -> None:
        """Stop the clock; the thread wakes at the old deadline, sees none, and sleeps on."""
        self._deadline = None

    def _run(self) -> None:
        with self._cond:
            while True:
                self._idle = True
                deadline = self._deadline
                if deadline is None:
                    self._cond.wait()
                    continue
                self._idle = False
                left = deadline - time.monotonic()
                if left <= 0 and self._deadline is deadline:
                    break
                self._cond.wait(max(left, 0.0))
            op, rank, size, seconds, dtype, shape, extra = self._what
        detail = f"({dtype}, shape {shape}{extra})" if dtype is not False else ""
        message = (
            f"ringcomm: rank {rank} of {size}: {op}{detail} did not finish within {seconds:g} s "
            "(RINGCOMM_TIMEOUT or init(timeout=)): a peer is dead, stuck, or called another "
            "operation; MPI calls cannot be interrupted, so ringcomm aborts the MPI job\n"
        )
        try:
            os.write(2, message.encode())
        finally:
            self._abort()


class CallDeadline:
    """Arm the watchdog for one operation and turn MPI errors into PeerError.

    A class rather than a generator context manager: it runs on every call,
    and calls on one backend never nest, so each backend reuses one.
    """

    __slots__ = ("_watchdog", "_timeout", "_error", "what")

    def __init__(self, watchdog: Watchdog, timeout: float, error: type) -> None:
        self._watchdog, self._timeout, self._error = watchdog, timeout, error
        self.what: tuple[Any, ...] = ()

    def __enter__(self) -> None:
        self._watchdog.arm(self._timeout, self.what)

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        self._watchdog.disarm()
        if kind is not None and issubclass(kind, self._error):
            op, rank, size = self.what[:3]
            raise PeerError(f"{op}: MPI error on rank {rank} of {size}: {exc}") from exc
