"""Process groups: `init`, `is_available`, `Group`, backend choice and the world registry."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from . import backends, environment
from .backends import BackendName
from .backends.base import Backend
from .backends.mpi import detect as mpi_detect
from .errors import InitError

__all__ = ["Group", "init", "is_available", "world"]

_lock = threading.Lock()
_world: Group | None = None


class Group:
    """A set of ranks that run collectives together; made by `init()` or `Group.split`."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

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
        return Group(self._backend.split(color, self.rank() if key == -1 else key))

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
