"""send/recv with torch's tags, and a monitored barrier that names the ranks missing.

ringcomm delivers the messages of one ordered pair of ranks in the order they were sent,
and matches nothing by tag. A tag other than 0 therefore travels as a small message of its
own ahead of the data, and the receiver compares it with the tag it asked for: a recv whose
tag differs from the next message's raises (naming both tags) instead of taking the wrong
message or reordering. Tag 0 on both sides costs nothing extra. Messages travel flat (their
elements in order), so a tensor of another shape with as many elements receives them, as
under gloo.

On the ring, each direction to each peer is a lane of its own (`ringcomm.group.Calls`):
sends and recvs run beside the collectives and beside each other, in order within a lane, so
both ranks may post their irecv before their isend, as under gloo. On the MPI backend they
queue in the group's call order: post sends first there.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from .. import environment
from ..errors import MismatchError
from .tensors import Staged, readable
from .work import Pending

if TYPE_CHECKING:
    from .backend import ProcessGroupRingcomm

__all__ = ["monitored_barrier", "recv", "send"]


def _peer(pg: ProcessGroupRingcomm, op: str, name: str, r: int) -> None:
    if not 0 <= r < pg.size() or r == pg.rank():
        raise ValueError(f"ringcomm {op}: {name} must be another rank of the group (0.."
                         f"{pg.size() - 1}, not {pg.rank()}), got {r}")


def send(pg: ProcessGroupRingcomm, t: torch.Tensor, dst: int, tag: int) -> dist.Work:
    """Queue `t` (its elements, flat) for rank `dst` of the group, after its tag if not 0."""
    _peer(pg, "send", "dst", dst)
    data = readable(t)
    b = pg._b
    label = np.array([tag], dtype=np.int64)

    def run() -> None:
        if tag:
            b.send(label, dst)
        b.send(data, dst)
    lane = ("send", dst) if b.concurrent_p2p else None  # beside the collectives and the recvs
    return Pending(pg._calls.run(run, async_op=True, lane=lane), [t], "send")


def recv(pg: ProcessGroupRingcomm, t: torch.Tensor, src: int, tag: int) -> dist.Work:
    """Queue a receive into `t` of the next message from rank `src`, checking its tag."""
    _peer(pg, "recv", "src", src)
    s = Staged(t, copy_in=False)
    into = s.array.reshape(-1)
    b = pg._b
    label = np.zeros(1, dtype=np.int64)

    def run() -> None:
        try:
            if tag:
                b.recv(label, src)
                if int(label[0]) != tag:
                    raise MismatchError(
                        f"recv from rank {src} with tag {tag}: the next message from rank {src} "
                        f"was sent with tag {int(label[0])}; ringcomm delivers a pair's messages "
                        "in the order they were sent and does not match them by tag: receive "
                        "them in that order")
            b.recv(into, src)
        except MismatchError as e:
            if "tag" in str(e):
                raise
            raise MismatchError(f"{e} (if the sender and this recv use different tags, one of "
                                "them 0: a tag other than 0 travels ahead of its message, "
                                "so both sides must use the same tag)") from e
        s.finish()
    lane = ("recv", src) if b.concurrent_p2p else None
    return Pending(pg._calls.run(run, async_op=True, lane=lane), [t], "recv", source=src)


def monitored_barrier(pg: ProcessGroupRingcomm, store: Any, n: int, timeout: Any,
                      wait_all_ranks: bool) -> None:
    """A barrier through torch's store whose failure names the ranks that did not arrive.

    Every rank writes its arrival; rank 0 waits for each (until the deadline) and writes the
    verdict; the others wait for the verdict. With `wait_all_ranks` rank 0 names every rank
    missing at the deadline, else the first.
    """
    if store is None:
        raise dist.DistBackendError("ringcomm monitored_barrier: this group has no store")
    seconds = _seconds(timeout) or pg._timeout or environment.timeout(os.environ)
    rank, size = pg.rank(), pg.size()
    key = f"ringcomm-monitored-barrier/{n}"
    store.set(f"{key}/{rank}", "1")
    if rank == 0:
        deadline = time.monotonic() + seconds
        missing: list[int] = []
        for r in range(1, size):
            if missing and not wait_all_ranks:
                break
            left = max(0.001, deadline - time.monotonic())
            if missing:  # past the deadline: only look
                arrived = store.check([f"{key}/{r}"])
            else:
                try:
                    store.wait([f"{key}/{r}"], datetime.timedelta(seconds=left))
                    arrived = True
                except (RuntimeError, dist.DistError):
                    arrived = False
            if not arrived:
                missing.append(r)
        verdict = "ok" if not missing else ",".join(map(str, missing))
        store.set(f"{key}/verdict", verdict)
        if missing:
            raise dist.DistBackendError(
                f"ringcomm monitored_barrier: rank(s) {verdict} of {size} did not arrive within "
                f"{seconds:g} s" + ("" if wait_all_ranks else
                                    " (the first missing; wait_all_ranks=True names all)"))
        return
    try:
        store.wait([f"{key}/verdict"], datetime.timedelta(seconds=seconds + 5.0))
        verdict = bytes(store.get(f"{key}/verdict")).decode()
    except (RuntimeError, dist.DistError) as e:
        raise dist.DistBackendError(
            f"ringcomm monitored_barrier: rank {rank} heard no verdict from rank 0 within "
            f"{seconds:g} s: rank 0 did not arrive, or the store is gone ({e})") from None
    if verdict != "ok":
        raise dist.DistBackendError(
            f"ringcomm monitored_barrier: rank(s) {verdict} of {size} did not arrive within "
            f"{seconds:g} s (rank 0's verdict)")


def _seconds(timeout: Any) -> float | None:
    if timeout is None:
        return None
    s = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)
    return s if s > 0 else None
