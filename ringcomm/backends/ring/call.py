"""What every call of a ring group shares: the route it took, its record in the watch and the
timeline, and the check of a peer's header against this rank's call.

`Route` is the one record of how the current call went (its path, and whether the compiled
core ran it): the algorithms write it, the trace, the log and `ringcomm bench` read it.
`tracked` wraps a backend method so that the watch learns when the call ended, however it
ended, and a traced call writes its span. `header_check` builds the check an algorithm runs
on each header it receives, and `mismatch` the error every rank raises when calls differ.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...errors import MismatchError, PeerError
from ...signature import Signature
from ...transport import header

if TYPE_CHECKING:
    from ...trace import Tracer
    from ...transport.watch import Watch

__all__ = ["Check", "Route", "header_check", "mismatch", "tracked"]

# The check of one received header: raises MismatchError or PeerError, or returns.
Check = Callable[[memoryview], None]


class Route:
    """How the current call of a group goes: the path it takes and which core ran it."""

    __slots__ = ("path", "native", "arrived")

    def __init__(self) -> None:
        self.path = "self"  # transport and algorithm: shm-slot, tcp-pipeline, ...
        self.native = False  # whether the compiled core ran the call's hot loop
        self.arrived = 0.0  # when the first peer's header came (traced calls)

    def begin(self) -> None:
        self.path, self.native = "self", False

    def took(self, path: str, native: bool = False) -> None:
        self.path, self.native = path, native

    @property
    def core(self) -> str:
        """Return which core ran the last call: "native" or "python"."""
        return "native" if self.native else "python"


def mismatch(op: str, label: str, rank: int, mine: Signature, who: int, theirs: Signature,
             what: str) -> MismatchError:
    """Return the error of ranks whose calls differ: both calls, and what differs."""
    return MismatchError(
        f"{op} mismatch in the {label} group: rank {rank} called {mine.describe()} but rank "
        f"{who} called {theirs.describe()}: {what}; every rank must make the same calls in the "
        "same order with the same dtype and shape")


def header_check(mine: Signature, src: int, size: int, label: str, peer: str,
                 route: Route | None = None) -> Check:
    """Return the check of a header that group rank `src` (named `peer`) sent for call `mine`.

    With `route`, the first header's arrival time is noted there (traced calls).
    """
    def check(raw: memoryview) -> None:
        if route is not None and not route.arrived:
            route.arrived = time.perf_counter()
        theirs = header.unpack(raw)
        if theirs is None:
            raise PeerError(f"{mine.op.label}: {peer} sent bytes that are not a ringcomm "
                            "message (a different ringcomm version?)")
        what = mine.differs(theirs) or header.dims_differ(mine, raw)
        if what is not None:
            who = theirs.rank if 0 <= theirs.rank < size else src
            raise mismatch(mine.op.label, label, mine.rank, mine, who, theirs, what)
    return check


class Tracked(Protocol):
    """What `tracked` needs of the object whose calls it records."""

    tracer: Tracer | None
    watch: Watch
    gid: int
    label: str
    route: Route


def tracked(method: Callable[..., None]) -> Callable[..., None]:
    """Record in the process's watch that a call of this group ended, however it ended.

    The watch answers peers' status queries from this record, so a call that
    returned must not look like one still waiting. A traced call also writes its span.
    """
    @functools.wraps(method)
    def call(self: Tracked, *args: Any) -> None:
        tracer, watch, gid = self.tracer, self.watch, self.gid
        if tracer is None:
            try:
                method(self, *args)
            finally:
                watch.leave(gid)
            return
        route = self.route
        route.arrived = 0.0
        start = time.perf_counter()
        error = None
        try:
            method(self, *args)
        except BaseException as e:
            error = type(e).__name__
            raise
        finally:
            a = watch.busy.get(gid, watch.activity)
            watch.leave(gid)
            end = time.perf_counter()
            arrived = route.arrived or start
            buf = args[0] if args and isinstance(args[0], np.ndarray) else None
            tracer.span(a.op, start, end, {
                "group": self.label, "call": a.seq, "bytes": 0 if buf is None else buf.nbytes,
                "path": route.path, "core": route.core,
                "wait_us": round((arrived - start) * 1e6, 1),
                "transfer_us": round((end - arrived) * 1e6, 1), "error": error})
    return call
