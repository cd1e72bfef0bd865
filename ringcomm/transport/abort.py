"""The abort protocol: how one rank's failure becomes the same error on every rank.

A process keeps one `Abort`: the job's reason to stop, once there is one.
It does not care how ranks are linked; both kinds of link meet it the same way:

- a failure on any link (a timeout, a mismatched header, a closed socket, a
  local peer whose process is gone) goes through `fail`, which decides what
  the failure says and tells every other rank before this rank closes anything;
- `stop` records the reason and runs the hooks the links registered: the
  endpoint shuts down its sockets (every thread blocked on one wakes), each
  shared segment marks this rank's region abandoned (a local peer's next wait
  raises instead of completing a call with a rank that gave up), and waits on
  shared-memory links see the reason at their next recheck.

Cause and echo. A rank that sees a connection close under it has only an
*echo* of a failure elsewhere; a timeout or an exception is a *cause*; a
mismatch is a cause that every rank re-raises as MismatchError. Notices
travel on short connections of their own (`send`), so a rank learns who
failed before its own connections close; a cause from a peer replaces an
echo recorded here, never the other way round, and a rank that only saw an
echo waits briefly (ABORT_GRACE) for the cause so that its error names the
rank that really failed.
"""

from __future__ import annotations

import enum
import struct
import threading
import time
from collections.abc import Callable, Container
from typing import NoReturn

from ..errors import CommTimeoutError, MismatchError, PeerAbortedError, PeerError, RingcommError

__all__ = ["ABORT_GRACE", "ECHO_PAUSE", "NOTIFY_SECONDS", "Abort", "Reason", "decode", "encode"]

# Time a rank that saw a peer vanish waits for that peer's reason to arrive.
ABORT_GRACE = 1.0
# Time a rank that saw a connection close waits for a notice before it sends its own: ranks
# send their notices before they close anything, so a closed connection is often already
# explained.
ECHO_PAUSE = 0.1
# Time to deliver abort notices to every other rank.
NOTIFY_SECONDS = 2.0

# A notice's text is cut to this many bytes; a longer one is refused unread.
NOTE_LIMIT = 60000
_NOTE = struct.Struct("<BI")


class Reason(enum.IntEnum):
    """How much an abort reason says, least first; a larger one replaces a smaller one."""

    ECHO = 0
    """A connection closed under a rank: only an echo of the failure that caused it."""
    CAUSE = 1
    """A timeout or an exception: the failure itself."""
    MISMATCH = 2
    """A cause that every rank re-raises as MismatchError."""


def classify(exc: BaseException) -> Reason:
    """Return what a failure seen on a link says about the job."""
    if isinstance(exc, MismatchError):
        return Reason.MISMATCH
    if isinstance(exc, PeerError) and not isinstance(exc, CommTimeoutError):
        return Reason.ECHO  # a link closed or a peer left under us: the cause is elsewhere
    return Reason.CAUSE


def encode(reason: str, kind: Reason) -> bytes:
    """Return the body of an abort notice."""
    note = reason.encode()[:NOTE_LIMIT]
    return _NOTE.pack(kind, len(note)) + note


def decode(read_exact: Callable[[int], bytes]) -> tuple[str, Reason]:
    """Read an abort notice through `read_exact(n)`; return (reason, kind).

    Raises ValueError for a notice longer than any rank sends (NOTE_LIMIT).
    """
    kind, n = _NOTE.unpack(read_exact(_NOTE.size))
    if n > NOTE_LIMIT:
        raise ValueError(f"an abort notice of {n} bytes (at most {NOTE_LIMIT})")
    return read_exact(n).decode("utf-8", "replace"), Reason(min(kind, Reason.MISMATCH))


class Abort:
    """The job's abort state in one process, and the notices that spread it.

    `send(dst, body, deadline)` delivers a notice to world rank `dst` (one
    attempt; a rank that is gone needs none); `silent()` names the ranks that
    did not answer the watch, whose notices are not waited for.
    """

    def __init__(self, rank: int, size: int, send: Callable[[int, bytes, float], None],
                 silent: Callable[[], Container[int]]) -> None:
        self.rank = rank
        self.size = size
        self._send = send
        self._silent = silent
        self._cond = threading.Condition()
        # Why the job stopped, or None while it runs: read on every call's fast path (an
        # attribute, not a property), written under the condition only.
        self.reason: str | None = None
        self._kind = Reason.ECHO
        self._remote = False
        self._notified = False
        self._notifying: dict[int, threading.Thread] = {}
        self._deadline = 0.0
        # The errors `fail` raised: one that comes back through another layer of the same call
        # is passed on as it is, not announced and waited for again.
        self._raised: list[BaseException] = []
        self.hooks: list[Callable[[], None]] = []
        """Called once, in order, when the job stops: what each link does to wake its waiters."""

    # -- state ---------------------------------------------------------------------------------

    def raise_if_stopped(self) -> None:
        """Raise the job's error if it has stopped."""
        reason = self.reason
        if reason is not None:
            if self._kind == Reason.MISMATCH:
                raise MismatchError(reason)
            raise PeerAbortedError(reason)

    def wait_reason(self, seconds: float) -> bool:
        """Wait up to `seconds` for any reason to stop; return whether there is one."""
        with self._cond:
            return self._cond.wait_for(lambda: self.reason is not None, seconds)

    def wait_cause(self, seconds: float) -> bool:
        """Wait up to `seconds` for a cause (not an echo); return whether it came."""
        with self._cond:
            return self._cond.wait_for(lambda: self._kind >= Reason.CAUSE, seconds)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self, reason: str, kind: Reason, *, notify: bool, remote: bool = False) -> None:
        """Stop the job: run the hooks (wake every waiter) and, with `notify`, tell every rank.

        The first reason stays, unless it was an echo and a cause arrives from a peer.
        """
        if notify:
            self.notify(reason, kind)
        with self._cond:
            first = self.reason is None
            if first or (remote and kind > self._kind == Reason.ECHO):
                self.reason, self._kind, self._remote = reason, kind, remote
                self._cond.notify_all()
        if first:
            for hook in self.hooks:
                hook()
        if notify:
            self.flush()

    def notify(self, reason: str, kind: Reason) -> None:
        """Start telling every other rank `reason`, once per process; return at once.

        A rank that sees a peer fail tells the others before it waits for that
        peer's own reason: otherwise each rank down the ring would wait out its
        grace period in turn, and the last would give up before the reason came.
        """
        with self._cond:
            if self._notified:
                return
            self._notified = True
        body = encode(reason, kind)
        deadline = time.monotonic() + NOTIFY_SECONDS
        self._notifying = {r: threading.Thread(target=self._send, args=(r, body, deadline),
                                               daemon=True, name="ringcomm-abort")
                           for r in range(self.size) if r != self.rank}
        for t in self._notifying.values():
            t.start()
        self._deadline = deadline

    def flush(self) -> None:
        """Wait (at most NOTIFY_SECONDS) until every notice has gone out.

        A rank that did not answer the watch's status queries is frozen or cut
        off: its notice is still sent, but not waited for.
        """
        silent = self._silent()
        for r, t in self._notifying.items():
            if r not in silent:
                t.join(max(0.0, self._deadline - time.monotonic()) + 0.1)

    # -- a failure on a link -------------------------------------------------------------------

    def announce(self, op: str, exc: BaseException) -> tuple[str, Reason]:
        """Tell every rank why this one fails, before any link closes; return (reason, kind).

        The notices go out first so that a neighbour learns who really failed
        before it sees this rank's links close and blames this rank. A closed
        link may already be explained by such a notice: wait a moment for one
        before sending an echo of our own.
        """
        reason = f"rank {self.rank} failed in {op}: {exc}"
        kind = classify(exc)
        if kind == Reason.ECHO and self.reason is None:
            self.wait_reason(ECHO_PAUSE)
        if self.reason is None:
            self.notify(reason, kind)  # at once: ranks further away must not wait in turn
            self.flush()
        return reason, kind

    def fail(self, op: str, exc: BaseException, blame: Callable[[], str | None]) -> NoReturn:
        """Turn a failure in call `op` into the error this rank raises, and stop the job.

        `blame()` says which rank the watch found frozen, for a timeout.
        """
        if any(exc is e for e in self._raised):
            raise exc
        if self.reason is not None and self._kind == Reason.MISMATCH \
                and not isinstance(exc, MismatchError):
            # This rank's watch found a deadlock and stopped the job under this call.
            raise self._record(MismatchError(f"{op}: {self.reason}")) from exc
        if isinstance(exc, CommTimeoutError):
            who = blame()
            if who is not None:
                exc = CommTimeoutError(f"{exc}; {who}")
        reason, kind = self.announce(op, exc)
        if kind == Reason.ECHO:
            self.wait_cause(ABORT_GRACE)  # the failed peer, or the rank that saw it, says why
            # A peer's reason wins when it is a cause, or when it came before ours: an echo
            # that came after ours is only this rank's own failure seen from the other side.
            if self._remote and (self._kind >= Reason.CAUSE or not self._notified):
                try:
                    self.raise_if_stopped()
                except RingcommError as e:
                    raise self._record(type(e)(f"{op}: {e}")) from exc
        self.stop(reason, kind, notify=False)
        raise self._record(exc)

    def _record(self, exc: BaseException) -> BaseException:
        """Remember an error `fail` raises (the last few: a job fails once)."""
        self._raised = [*self._raised[-3:], exc]
        return exc
