"""Collectives on Python objects: pickled, their size first, then the bytes.

Each step is a checked call of the array collectives (`ringcomm.ops`), so a
mismatch is a MismatchError as for arrays. Unpickling runs code the sender
chose: these calls trust the other ranks as the job itself does, and refuse
to run where the job has no secret that keeps strangers out.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from . import environment
from .backends.base import Backend
from .errors import RingcommError
from .group import Group
from .ops import _call, _check_rank, _group

__all__ = ["all_gather_object", "broadcast_object", "recv_object", "send_object"]


def _pickled(obj: Any) -> np.ndarray:
    return np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)


def _may_unpickle(b: Backend, op: str) -> None:
    """Refuse, before any message moves and on every rank of the call alike, object calls of an
    unauthenticated job: anyone who reaches its ports can be its peer, and a pickle runs code."""
    if not b.peers_proved_secret() and not environment.unauthenticated_pickle(os.environ):
        raise RingcommError(
            f"{op}: this job runs without a secret ({environment.UNAUTHENTICATED}=1), so a "
            "stranger could send the object, and unpickling it would run the stranger's code; "
            f"set {environment.TOKEN} on every rank instead, or {environment.UNAUTHENTICATED_PICKLE}"
            "=1 to accept that risk")


def all_gather_object(obj: Any, *, group: Group | None = None, async_op: bool = False) -> Any:
    """Return the list of every rank's `obj` (pickled), in rank order.

    Unpickling runs code the other ranks chose: it trusts them as the job itself does.
    """
    g = _group(group)
    b = g._backend
    _may_unpickle(b, "all_gather_object")
    data = _pickled(obj)

    def run() -> list[Any]:
        sizes = np.empty(b.size, dtype=np.int64)
        b.all_gather(np.array([data.size], dtype=np.int64), sizes)
        width = int(sizes.max())
        padded = np.zeros(width, dtype=np.uint8)
        padded[:data.size] = data
        every = np.empty(b.size * width, dtype=np.uint8)
        b.all_gather(padded, every)
        return [pickle.loads(every[i * width:i * width + int(n)].tobytes())
                for i, n in enumerate(sizes)]
    return _call(g, "all_gather_object", run, async_op)


def broadcast_object(obj: Any, root: int = 0, *, group: Group | None = None,
                     async_op: bool = False) -> Any:
    """Return root's `obj` on every rank (root gets its own object back; the others a copy)."""
    g = _group(group)
    b = g._backend
    root = _check_rank("broadcast_object", "root", root, b, peer=False)
    _may_unpickle(b, "broadcast_object")
    data = _pickled(obj) if b.rank == root else np.empty(0, dtype=np.uint8)

    def run() -> Any:
        size = np.array([data.size], dtype=np.int64)
        b.broadcast(size, root)
        buf = data.copy() if b.rank == root else np.empty(int(size[0]), dtype=np.uint8)
        b.broadcast(buf, root)
        return obj if b.rank == root else pickle.loads(buf.tobytes())
    return _call(g, "broadcast_object", run, async_op)


def send_object(obj: Any, dst: int, *, group: Group | None = None,
                async_op: bool = False) -> Any:
    """Send `obj` (pickled) to rank `dst`, which takes it with `recv_object`."""
    g = _group(group)
    b = g._backend
    dst = _check_rank("send_object", "dst", dst, b, peer=True)
    _may_unpickle(b, "send_object")  # its receiver refuses: so does the sender, before sending
    data = _pickled(obj)

    def run() -> None:
        b.send(np.array([data.size], dtype=np.int64), dst)
        b.send(data, dst)
    return _call(g, "send_object", run, async_op)


def recv_object(src: int, *, group: Group | None = None, async_op: bool = False) -> Any:
    """Return the object rank `src` sent with `send_object`."""
    g = _group(group)
    b = g._backend
    src = _check_rank("recv_object", "src", src, b, peer=True)
    _may_unpickle(b, "recv_object")

    def run() -> Any:
        size = np.empty(1, dtype=np.int64)
        b.recv(size, src)
        buf = np.empty(int(size[0]), dtype=np.uint8)
        b.recv(buf, src)
        return pickle.loads(buf.tobytes())
    return _call(g, "recv_object", run, async_op)
