"""Collectives on Python objects: pickled, their size first, then the bytes.

Each step is a checked call of the array collectives (`ringcomm.ops`), so a mismatch is a
MismatchError as for arrays. Unpickling runs code the sender chose, so:

- these calls refuse to run where the job has no secret that keeps strangers out
  (RINGCOMM_UNAUTHENTICATED), unless RINGCOMM_UNAUTHENTICATED_PICKLE accepts the risk;
- on the ring every pickle travels sealed: an HMAC-SHA256 with a key derived from the job's
  key over the call (its op, sender, receiver and number) and the bytes, checked before
  anything is unpickled, so a byte changed or a message replayed on the way never reaches
  `pickle.loads` (the array calls' data is not sealed: see docs/architecture.md);
- a size a peer announces is checked against RINGCOMM_MAX_OBJECT_BYTES before anything is
  allocated, on every rank of the call alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import weakref
from collections import Counter
from typing import Any

import numpy as np

from . import environment
from .backends.base import Backend
from .errors import RingcommError
from .group import Group
from .ops import _call, _check_rank, _group

__all__ = ["all_gather_object", "broadcast_object", "open_sealed", "recv_object", "seal",
           "send_object"]

_MAC = 32
# Object calls made so far, per group and kind: the number each seal covers. Every rank makes
# a group's calls in the same order, so both ends of a message count alike.
_calls: weakref.WeakKeyDictionary[Backend, Counter] = weakref.WeakKeyDictionary()


def seal(key: bytes, context: bytes, data: bytes) -> bytes:
    """Return `data` followed by its MAC under `key` over `context` and `data`."""
    return data + hmac.new(key, context + b"\0" + data, hashlib.sha256).digest()


def open_sealed(key: bytes, context: bytes, sealed: bytes) -> bytes:
    """Return the data of `sealed`; raise RingcommError unless its MAC is right for `context`."""
    data, mac = sealed[:-_MAC], sealed[-_MAC:]
    want = hmac.new(key, context + b"\0" + data, hashlib.sha256).digest()
    if len(sealed) < _MAC or not hmac.compare_digest(mac, want):
        raise RingcommError("an object message is not authentic (changed or replayed on the "
                            "way, or sent by a process without the job's key); it was not "
                            "unpickled")
    return data


class _Seal:
    """How one object call seals and opens its messages (nothing where there is no key)."""

    def __init__(self, b: Backend, op: str, *who: int) -> None:
        self.key = b.object_key()
        counts = _calls.setdefault(b, Counter())
        kind = (op, *who)
        counts[kind] += 1
        self.base = f"{op}|{'|'.join(map(str, who))}|{counts[kind]}"
        self.extra = _MAC if self.key is not None else 0

    def close(self, sender: int, data: bytes) -> bytes:
        if self.key is None:
            return data
        return seal(self.key, f"{self.base}|from {sender}".encode(), data)

    def open(self, sender: int, data: bytes) -> Any:
        if self.key is not None:
            data = open_sealed(self.key, f"{self.base}|from {sender}".encode(), data)
        return pickle.loads(data)


def _pickled(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _may_unpickle(b: Backend, op: str) -> None:
    """Refuse, before any message moves and on every rank of the call alike, object calls of an
    unauthenticated job: anyone who reaches its ports can be its peer, and a pickle runs code."""
    if not b.peers_proved_secret() and not environment.unauthenticated_pickle(os.environ):
        raise RingcommError(
            f"{op}: this job runs without a secret ({environment.UNAUTHENTICATED}=1), so a "
            "stranger could send the object, and unpickling it would run the stranger's code; "
            f"set {environment.TOKEN} on every rank instead, or {environment.UNAUTHENTICATED_PICKLE}"
            "=1 to accept that risk")


def _check_sizes(op: str, sizes: list[int], ranks: list[int], extra: int) -> None:
    """Raise (on every rank of the call, which all see the same sizes) when a size is past
    RINGCOMM_MAX_OBJECT_BYTES, before anything of that size is allocated."""
    try:
        most = environment.max_object_bytes(os.environ)
    except ValueError as e:
        raise RingcommError(f"{op}: {e}") from None
    for r, n in zip(ranks, sizes):
        if n - extra > most or n < extra:
            raise RingcommError(f"{op}: rank {r}'s object is {n - extra} bytes pickled, more "
                                f"than {environment.MAX_OBJECT_BYTES}={most} allows; raise it "
                                "on every rank, or send the data as arrays")


def all_gather_object(obj: Any, *, group: Group | None = None, async_op: bool = False) -> Any:
    """Return the list of every rank's `obj` (pickled), in rank order."""
    g = _group(group)
    b = g._backend
    _may_unpickle(b, "all_gather_object")
    sealing = _Seal(b, "all_gather_object")
    data = np.frombuffer(sealing.close(b.rank, _pickled(obj)), dtype=np.uint8)

    def run() -> list[Any]:
        sizes = np.empty(b.size, dtype=np.int64)
        b.all_gather(np.array([data.size], dtype=np.int64), sizes)
        _check_sizes("all_gather_object", [int(n) for n in sizes], list(range(b.size)),
                     sealing.extra)
        width = int(sizes.max())
        padded = np.zeros(width, dtype=np.uint8)
        padded[:data.size] = data
        every = np.empty(b.size * width, dtype=np.uint8)
        b.all_gather(padded, every)
        return [sealing.open(i, every[i * width:i * width + int(n)].tobytes())
                for i, n in enumerate(sizes)]
    return _call(g, "all_gather_object", run, async_op)


def broadcast_object(obj: Any, root: int = 0, *, group: Group | None = None,
                     async_op: bool = False) -> Any:
    """Return root's `obj` on every rank (root gets its own object back; the others a copy)."""
    g = _group(group)
    b = g._backend
    root = _check_rank("broadcast_object", "root", root, b, peer=False)
    _may_unpickle(b, "broadcast_object")
    sealing = _Seal(b, "broadcast_object", root)
    data = np.frombuffer(sealing.close(root, _pickled(obj)), dtype=np.uint8) \
        if b.rank == root else np.empty(0, dtype=np.uint8)

    def run() -> Any:
        size = np.array([data.size], dtype=np.int64)
        b.broadcast(size, root)
        _check_sizes("broadcast_object", [int(size[0])], [root], sealing.extra)
        buf = data.copy() if b.rank == root else np.empty(int(size[0]), dtype=np.uint8)
        b.broadcast(buf, root)
        return obj if b.rank == root else sealing.open(root, buf.tobytes())
    return _call(g, "broadcast_object", run, async_op)


def send_object(obj: Any, dst: int, *, group: Group | None = None,
                async_op: bool = False) -> Any:
    """Send `obj` (pickled) to rank `dst`, which takes it with `recv_object`."""
    g = _group(group)
    b = g._backend
    dst = _check_rank("send_object", "dst", dst, b, peer=True)
    _may_unpickle(b, "send_object")  # its receiver refuses: so does the sender, before sending
    sealing = _Seal(b, "object", b.rank, dst)
    data = np.frombuffer(sealing.close(b.rank, _pickled(obj)), dtype=np.uint8)

    def run() -> None:
        b.send(np.array([data.size], dtype=np.int64), dst)
        # Past the cap the receiver raises after the size: so does the sender, sending no data.
        _check_sizes("send_object", [data.size], [b.rank], sealing.extra)
        b.send(data, dst)
    return _call(g, "send_object", run, async_op)


def recv_object(src: int, *, group: Group | None = None, async_op: bool = False) -> Any:
    """Return the object rank `src` sent with `send_object`."""
    g = _group(group)
    b = g._backend
    src = _check_rank("recv_object", "src", src, b, peer=True)
    _may_unpickle(b, "recv_object")
    sealing = _Seal(b, "object", src, b.rank)

    def run() -> Any:
        size = np.empty(1, dtype=np.int64)
        b.recv(size, src)
        _check_sizes("recv_object", [int(size[0])], [src], sealing.extra)
        buf = np.empty(int(size[0]), dtype=np.uint8)
        b.recv(buf, src)
        return sealing.open(src, buf.tobytes())
    return _call(g, "recv_object", run, async_op)
