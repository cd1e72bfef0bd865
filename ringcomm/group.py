"""Process groups: `init`, `is_available`, `Group`, backend choice and the world registry."""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from . import backends, environment
from .backends import BackendName
from .backends.base import Backend
from .backends.mpi import detect as mpi_detect
from .errors import InitError

__all__ = ["Group", "Work", "init", "is_available", "new_group", "world"]

_lock = threading.Lock()
_world: Group | None = None


class Work(Future):
    """A call made with ``async_op=True``: a `concurrent.futures.Future` of its result.

    ``result(timeout=None)`` (or ``wait``) returns what the blocking call returns, or
    raises the error it raises, with the same type. Calls of a group complete in the order
    they were made. A call cannot be cancelled once made (the other ranks make it too):
    `cancel` returns False.
    """

    def wait(self, timeout: float | None = None) -> Any:
        """Return the call's result, waiting at most `timeout` seconds (None: until it is done)."""
        return self.result(timeout)

    def cancel(self) -> bool:
        return False


class Calls:
    """One group's calls, run one at a time in the order they were made, in lanes.

    A call is a function of no arguments (the backend call with its arrays bound). The
    collectives share one lane: the order every rank keeps. A backend whose send/recv may run
    beside its collectives (`Backend.concurrent_p2p`) gives each direction to each peer a lane
    of its own, so an asynchronous recv posted before the send that feeds the peer does not
    hold that send back (MPI's Irecv before Isend): messages between two ranks keep their
    order, and nothing else waits for them. An asynchronous call queues in its lane and returns
    its Work; each lane has one worker thread. A blocking call is the same function: run at
    once in the caller's thread when nothing of the group is in flight, else queued behind the
    calls before it in its lane and waited for.
    """

    def __init__(self, label: str) -> None:
        self._label = label
        self._cond = threading.Condition()
        self._lanes: dict[object, deque[tuple[Work, Callable[[], Any]]]] = {}
        # Calls queued or running in every lane: read by the API's fast entries (0: none in
        # flight, so a call may run at once), written under the condition only.
        self.pending = 0
        self._exit_drain = False

    @property
    def in_flight(self) -> int:
        """Return how many asynchronous calls have not finished."""
        return self.pending

    def run(self, fn: Callable[[], Any], async_op: bool = False, lane: object = None) -> Any:
        """Run `fn` in call order in `lane` (None: the collectives'); return its result, or
        its Work when `async_op`."""
        if not async_op and self.pending == 0:
            return fn()
        work = Work()
        with self._cond:
            queue = self._lanes.get(lane)
            if queue is None:
                queue = self._lanes[lane] = deque()
                threading.Thread(target=self._loop, args=(queue,), daemon=True,
                                 name=f"ringcomm-calls-{self._label}"
                                 + ("" if lane is None else f"-{lane}")).start()
                if not self._exit_drain:
                    self._exit_drain = True
                    atexit.register(self.drain)
            queue.append((work, fn))
            self.pending += 1
            self._cond.notify_all()
        return work if async_op else work.result()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no call is in flight, at most `timeout` s (default RINGCOMM_TIMEOUT).

        Runs at exit, so a call the program never waited on still happens; a peer
        that is gone fails it at once, and a frozen one ends the wait at the deadline.
        Return whether every call finished.
        """
        seconds = _timeout(timeout, os.environ)
        with self._cond:
            return self._cond.wait_for(lambda: self.pending == 0, seconds)

    def _loop(self, queue: deque[tuple[Work, Callable[[], Any]]]) -> None:
        # A daemon thread: after `drain`, a rank exits even with a call stuck in flight.
        while True:
            with self._cond:
                while not queue:
                    self._cond.wait()
                work, fn = queue[0]
            try:
                work.set_result(fn())
            except BaseException as e:  # handed to whoever waits on the Work
                work.set_exception(e)
            finally:
                with self._cond:
                    queue.popleft()
                    self.pending -= 1
                    self._cond.notify_all()


class Group:
    """A set of ranks that run collectives together; made by `init()` or `Group.split`."""

    def __init__(self, backend: Backend, label: str = "world") -> None:
        self._backend = backend
        self._calls = Calls(label)

    def rank(self) -> int:
        """Return this process's rank in the group."""
        return self._backend.rank

    def size(self) -> int:
        """Return the number of ranks in the group."""
        return self._backend.size

    def split(self, color: int, key: int = -1) -> Group:
        """Return the group of ranks that passed the same `color`, ordered by `key` then rank.

        Collective over this group (MPI_Comm_split semantics). `key=-1` orders
        by rank in this group.
        """
        color, key = int(color), int(key)
        if color < 0:
            raise ValueError(f"split: color must be >= 0, got {color}")
        k = self.rank() if key == -1 else key
        return self._calls.run(lambda: Group(self._backend.split(color, k), f"split{color}"))

    def new_group(self, ranks: list[int] | tuple[int, ...], tag: str = "") -> Group:
        """Return the group of `ranks` (ranks of this group; the new group's rank i is
        ranks[i]), made by those ranks alone: only members call it, and every member passes
        the same `ranks` and `tag` (which tells apart groups of the same ranks). For
        frameworks whose groups are made by their members only (torch's new_group)."""
        members = [int(r) for r in ranks]
        size, me = self.size(), self.rank()
        if not members or len(set(members)) != len(members):
            raise ValueError(f"new_group: ranks must be distinct and at least one, got {members}")
        if any(not 0 <= r < size for r in members):
            raise ValueError(f"new_group: ranks must be in [0, {size}), got {members}")
        if me not in members:
            raise ValueError(f"new_group: rank {me} is not in {members}; only the members of "
                             "a new group call new_group (use split() for a call of every rank)")
        name = tag or ",".join(map(str, members))
        return self._calls.run(lambda: Group(self._backend.subgroup(members, str(tag)),
                                             f"group({name})"))

    @property
    def backend(self) -> str:
        """Return the name of the backend that carries this group's messages."""
        return self._backend.name

    def __repr__(self) -> str:
        return f"Group(rank={self.rank()}, size={self.size()}, backend={self.backend!r})"


def _timeout(timeout: float | None, environ: Mapping[str, str]) -> float:
    if timeout is not None:
        return float(timeout)
    try:
        return environment.timeout(environ)
    except ValueError as e:
        raise InitError(str(e)) from None


def _configure_logging(environ: Mapping[str, str]) -> None:
    """Show the `ringcomm` logger's messages at RINGCOMM_LOG_LEVEL on stderr, once."""
    try:
        level = environment.log_level(environ)
    except ValueError as e:
        raise InitError(str(e)) from None
    if level is None:
        return
    log = logging.getLogger("ringcomm")
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler()
        rank = environ.get(environment.RANK) or environ.get(environment.MLX_RANK) or "?"
        handler.setFormatter(logging.Formatter(f"ringcomm[rank {rank}] %(levelname)s: %(message)s"))
        log.addHandler(handler)


def _check_name(backend: str) -> None:
    if backend != "any" and backend not in backends.names():
        known = ", ".join(["any", *backends.names()])
        raise ValueError(f"backend must be one of {known}, got {backend!r}")


def _choose(backend: str, environ: Mapping[str, str]) -> str:
    """Return the registered backend to create for a requested name and an environment.

    The order is the one docs/launching.md gives: a backend named by the
    program, then by the launcher (RINGCOMM_BACKEND), then a ring launcher's
    variables (ringcomm's, MLX's), then an MPI launcher's, then an engine's
    that the ring meets through (torch's MASTER_ADDR/RANK/WORLD_SIZE, a
    Slurm step), else the group of one.
    """
    _check_name(backend)
    if backend != "any":
        return backend
    chosen = environ.get(environment.BACKEND)
    if chosen:
        if chosen not in backends.names():
            raise InitError(f"{environment.BACKEND} must be one of "
                            f"{', '.join(backends.names())}, got {chosen!r}")
        return chosen
    if environment.ring_launch(environ).launched:
        return "ring"
    if (mpi_detect.launched_size(environ, slurm=False) or 0) > 1:
        return "mpi"
    if _rendezvous(environ) is not None:
        return "ring"
    return "single"


def _rendezvous(environ: Mapping[str, str]) -> environment.Rendezvous | None:
    try:
        return environment.rendezvous(environ)
    except ValueError as e:
        raise InitError(str(e)) from None


def init(strict: bool = False, backend: BackendName = "any", *,
         timeout: float | None = None) -> Group:
    """Return the world group, creating it from the launcher's environment on the first call.

    Without launcher environment, return a group of size 1 (or, with
    `strict=True`, raise an InitError naming the missing variables).
    `timeout` (default: RINGCOMM_TIMEOUT, else 300 s) bounds every wait on a peer.
    """
    global _world
    with _lock:
        if _world is not None:
            _check_name(backend)
            # init(backend="ring") without a launch is the group of one, as on a first call.
            alike = backend in ("any", _world.backend) or (backend, _world.backend) == (
                "ring", "single")
            if not alike:
                raise InitError(
                    f"init(backend={backend!r}): this process already runs the "
                    f"{_world.backend!r} backend (a world of {_world.size()}); a process has "
                    "one world: call init()" + (f" or init(backend={_world.backend!r})"
                                                if _world.backend in backends.names() else ""))
            return _world
        environ = os.environ
        name = _choose(backend, environ)
        seconds = _timeout(timeout, environ)
        _configure_logging(environ)
        # init(backend="ring") outside any launch is a group of one, as in MLX.
        if name == "ring" and not environment.ring_launch(environ).launched \
                and environ.get(environment.BACKEND) is None and _rendezvous(environ) is None:
            if strict:
                raise InitError(
                    f"ring backend: not started by a launcher; missing {environment.RANK} and "
                    f"{environment.HOSTFILE} (run it with: ringcomm launch -n N script.py)"
                )
            name = "single"
        elif name == "single" and strict:
            raise InitError(
                f"no launcher environment: missing {environment.RANK} and {environment.HOSTFILE} "
                "(or MLX_RANK/MLX_HOSTFILE, or an MPI launcher's variables); "
                "run it with: ringcomm launch -n N script.py"
            )
        _world = Group(backends.create(name, environ, seconds))
        return _world


def world() -> Group:
    """Return the world group, calling `init()` if no group exists yet."""
    return _world if _world is not None else init()


def is_available(backend: str = "any") -> bool:
    """Return whether `backend` can be used in this environment; False for an unknown name."""
    if backend == "any":
        return True
    return backend in backends.names() and backends.available(backend)


def new_group(ranks: list[int] | tuple[int, ...], *, parent: Group | None = None,
              tag: str = "") -> Group:
    """Return the group of `ranks` of `parent` (the world by default), made by those ranks
    alone (`Group.new_group`)."""
    return (parent if parent is not None else world()).new_group(ranks, tag)
