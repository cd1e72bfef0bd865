"""Process groups: `init`, `is_available`, `Group`, backend choice and the world registry."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping

from . import environment
from .backends.base import Backend
from .backends.single import SingleBackend
from .errors import InitError
from .transport.net import parse_address

__all__ = ["Group", "init", "is_available", "world"]

_BACKENDS = ("any", "ring", "mpi")
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
    raw = environ.get(environment.TIMEOUT)
    if not raw:
        return environment.DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise InitError(f"{environment.TIMEOUT} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise InitError(f"{environment.TIMEOUT} must be positive, got {raw!r}")
    return value


def _ring_env(environ: Mapping[str, str]) -> tuple[str | None, str | None, list[str]]:
    """Return (rank, hostfile, missing names), preferring RINGCOMM_* over MLX_*.

    When no variable of either pair is set, every name of the RINGCOMM_* pair is missing.
    """
    for rank_var, file_var in ((environment.RANK, environment.HOSTFILE), (environment.MLX_RANK, environment.MLX_HOSTFILE)):
        rank, path = environ.get(rank_var), environ.get(file_var)
        if rank is not None or path is not None:
            missing = [v for v, val in ((rank_var, rank), (file_var, path)) if val is None]
            return rank, path, missing
    return None, None, [environment.RANK, environment.HOSTFILE]


def _ring_launched(environ: Mapping[str, str]) -> bool:
    """Return whether a launcher set any variable of the ring contract."""
    rank, path, _ = _ring_env(environ)
    return rank is not None or path is not None


def _read_rank_hostfile(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise InitError(f"cannot read hostfile {path!r}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise InitError(f"hostfile {path!r} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not data:
        raise InitError(f"hostfile {path!r}: expecting a non-empty list of lists of 'ip:port'")
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            entry = data[i] = [entry]
        if not isinstance(entry, list) or not entry or not all(isinstance(a, str) for a in entry):
            raise InitError(
                f"hostfile {path!r}: entry {i} must be a list of 'ip:port' strings, got {entry!r}"
            )
        for text in entry:
            try:
                parse_address(text)
            except ValueError as e:
                raise InitError(f"hostfile {path!r}: entry {i}: {e}") from None
    return data


def _make_ring(environ: Mapping[str, str], timeout: float) -> Backend:
    from .backends.ring import backend as ring

    rank_s, path, missing = _ring_env(environ)
    if missing:
        raise InitError(f"ring backend: missing environment variable(s) {', '.join(missing)}")
    assert rank_s is not None and path is not None
    hosts = _read_rank_hostfile(path)
    try:
        rank = int(rank_s)
    except ValueError:
        raise InitError(f"rank must be an integer, got {rank_s!r}") from None
    if not 0 <= rank < len(hosts):
        raise InitError(f"rank {rank} is out of range for a hostfile of {len(hosts)} entries")
    token = environ.get(environment.TOKEN)
    if token:
        key = token.encode()
    else:  # a program started by another launcher: the hostfile is the shared secret
        with open(path, "rb") as f:
            key = hashlib.sha256(b"ringcomm-hostfile:" + f.read()).digest()
    return ring.create(rank, hosts, key, timeout)


def _mpi_size(environ: Mapping[str, str]) -> int | None:
    from .backends.mpi import detect as mpi_env

    return mpi_env.launched_size(environ)


def _make_mpi(timeout: float) -> Backend:
    from .backends.mpi import backend as mpi

    return mpi.create(timeout)


def _choose(backend: str, environ: Mapping[str, str]) -> str:
    """Return 'ring', 'mpi' or 'single' for a requested backend and an environment."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    if backend != "any":
        return backend
    chosen = environ.get(environment.BACKEND)
    if chosen:
        if chosen not in ("ring", "mpi"):
            raise InitError(f"{environment.BACKEND} must be 'ring' or 'mpi', got {chosen!r}")
        return chosen
    if _ring_launched(environ):
        return "ring"
    if (_mpi_size(environ) or 0) > 1:
        return "mpi"
    return "single"


def init(strict: bool = False, backend: str = "any", *, timeout: float | None = None) -> Group:
    """Return the world group, creating it from the launcher's environment on the first call.

    Without launcher environment, return a group of size 1 (or, with
    `strict=True`, raise an InitError naming the missing variables).
    `timeout` (default: RINGCOMM_TIMEOUT, else 300 s) bounds every wait on a peer.
    """
    global _world
    with _lock:
        if _world is not None:
            return _world
        environ = os.environ
        name = _choose(backend, environ)
        seconds = _timeout(timeout, environ)
        if name == "ring":
            if not _ring_launched(environ) and environ.get(environment.BACKEND) is None:
                if strict:
                    raise InitError(
                        f"ring backend: not started by a launcher; missing {environment.RANK} and "
                        f"{environment.HOSTFILE} (run it with: ringcomm launch -n N script.py)"
                    )
                _world = Group(SingleBackend())
            else:
                _world = Group(_make_ring(environ, seconds))
        elif name == "mpi":
            _world = Group(_make_mpi(seconds))
        else:
            if strict:
                raise InitError(
                    f"no launcher environment: missing {environment.RANK} and {environment.HOSTFILE} "
                    "(or MLX_RANK/MLX_HOSTFILE, or an MPI launcher's variables); "
                    "run it with: ringcomm launch -n N script.py"
                )
            _world = Group(SingleBackend())
        return _world


def world() -> Group:
    """Return the world group, calling `init()` if no group exists yet."""
    return _world if _world is not None else init()


def is_available(backend: str = "any") -> bool:
    """Return whether `backend` can be used in this environment."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    if backend in ("any", "ring"):
        return True
    try:
        from .backends.mpi import backend as mpi

        return mpi.is_available()
    except ImportError:
        return False
