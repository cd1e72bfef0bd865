"""The bandwidth path of the ring: pipelined, both directions, every connection.

The buffer is cut into `size` blocks (block i belongs to rank i), each block
into one slice per lane, each slice into chunks. A lane is one direction on one
link (`transport.link`: a TCP connection or a shared-memory channel pair):
clockwise lanes send to the right neighbour and receive from the left,
counter-clockwise lanes the other way round. Each lane runs a sender and
a receiver thread. At step t the sender forwards the segment the receiver
finished at step t-1, chunk by chunk, as soon as each chunk is done, so
sending chunk k+1 overlaps reducing chunk k.

Reduce-scatter steps receive into one chunk buffer per lane and reduce with
`ufunc(dst, chunk, out=dst)`; all-gather steps receive straight into the
buffer. Nothing else is copied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from ....errors import CommTimeoutError
from ....signature import Signature
from ....transport import header
from ....transport.link import Link
from .rows import even

__all__ = [
    "Lane", "Transfer", "Step", "chunks", "even", "lanes", "run", "steps", "run_sender",
    "run_receiver",
]

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Step:
    """One ring step of a lane: the segment to send, the one to receive, and what to do with it."""

    send: tuple[int, int]  # element range
    recv: tuple[int, int]
    reduce: bool


@dataclass
class Transfer:
    """One collective's work for every lane."""

    data: np.ndarray  # 1-D typed view of the buffer the result goes to
    src: np.ndarray  # the input: the first reduction of each segment reads it (may be data)
    ufunc: Callable | None
    sig: Signature
    stopped: bool = False  # set when any lane failed: waiting senders give up at once

    def stop(self, lanes: list[Lane]) -> None:
        """Wake every sender that waits on its receiver, after a failure."""
        self.stopped = True
        for lane in lanes:
            with lane.cond:
                lane.cond.notify_all()


@dataclass
class Lane:
    """A direction on a link, with its steps and the progress of its receiver."""

    send_link: Link
    recv_link: Link
    steps: list[Step]
    check: Callable[[memoryview], None]  # raises on a header that does not match
    done: int = 0  # chunks the receiver has finished, in step order
    cond: threading.Condition = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.cond = threading.Condition()


def lanes(rank: int, size: int, right: list[Link], left: list[Link],
          blocks: list[tuple[int, int]], n_rs: int, n_ag: int,
          checker: Callable[[int], Callable[[memoryview], None]]) -> list[Lane]:
    """Return a lane per link and direction, each with its slice of every block.

    Lane j < len(right) runs clockwise on link j (sends right, receives left);
    lane len(right) + j runs the other way on the same links. `checker(r)`
    checks rank r's header.
    """
    nl = len(right)
    parts = [even(b - a, 2 * nl) for a, b in blocks]
    out = []
    for j in range(2 * nl):
        d, c = (1, j) if j < nl else (-1, j - nl)

        def seg(i: int, j: int = j) -> tuple[int, int]:
            lo, hi = parts[i][j]
            return blocks[i][0] + lo, blocks[i][0] + hi

        frm = (rank - d) % size
        send_link, recv_link = (right[c], left[c]) if d == 1 else (left[c], right[c])
        out.append(Lane(send_link, recv_link, steps(rank, size, d, seg, n_rs, n_ag),
                        checker(frm)))
    return out


def chunks(a: int, b: int, per: int) -> list[tuple[int, int]]:
    """Return [a, b) cut into pieces of at most `per` elements (one empty piece for a == b)."""
    if a == b:
        return [(a, a)]
    return [(i, min(i + per, b)) for i in range(a, b, per)]


def steps(rank: int, size: int, direction: int, seg: Callable[[int], tuple[int, int]],
          n_rs: int, n_ag: int) -> list[Step]:
    """Return the ring steps of one lane; `direction` is +1 (clockwise) or -1."""
    d = direction
    out = [Step(seg((rank - d * (1 + s)) % size), seg((rank - d * (2 + s)) % size), True)
           for s in range(n_rs)]
    out += [Step(seg((rank - d * s) % size), seg((rank - d * (1 + s)) % size), False)
            for s in range(n_ag)]
    return out


def run_sender(lane: Lane, transfer: Transfer) -> None:
    """Send the header, then every step's segment, each chunk once the receiver has it."""
    data, op = transfer.data, transfer.sig.op.label
    raw = data.view(np.uint8)
    isz = data.itemsize
    per = max(1, CHUNK_BYTES // isz)
    src_raw = transfer.src.view(np.uint8)
    link = lane.send_link
    timeout = link.timeout
    link.send(header.pack(transfer.sig), op)
    need = 0
    for t, step in enumerate(lane.steps):
        pieces = chunks(*step.send, per)
        # Step 0 sends this rank's own input; later steps forward what the receiver finished.
        out = src_raw if t == 0 else raw
        for a, b in pieces:
            if t > 0:
                need += 1
                if lane.done < need:
                    def ready(n: int = need) -> bool:
                        return lane.done >= n or transfer.stopped

                    with lane.cond:
                        lane.cond.wait_for(ready, timeout)
                    if transfer.stopped:
                        return  # another thread failed and reports why
                    if lane.done < need:
                        raise CommTimeoutError(f"{op}: no progress from {lane.recv_link.peer} "
                                               f"within {timeout:g} s")
            if b > a:
                link.send(out[a * isz:b * isz].data, op)


def run_receiver(lane: Lane, transfer: Transfer) -> None:
    """Check the header, then receive every step's segment, reducing or storing it."""
    data, op = transfer.data, transfer.sig.op.label
    raw = data.view(np.uint8)
    isz = data.itemsize
    per = max(1, CHUNK_BYTES // isz)
    link = lane.recv_link
    hdr = bytearray(header.SIZE)
    link.recv_into(memoryview(hdr), op)
    lane.check(memoryview(hdr))
    longest = max((s.recv[1] - s.recv[0] for s in lane.steps if s.reduce), default=0)
    tmp = np.empty(min(per, longest), dtype=data.dtype)  # the lane's one chunk buffer
    for step in lane.steps:
        for a, b in chunks(*step.recv, per):
            if b > a:
                if step.reduce:
                    part = tmp[: b - a]
                    link.recv_into(part.view(np.uint8).data, op)
                    # Each segment is reduced once per rank: its other operand is the input.
                    transfer.ufunc(transfer.src[a:b], part, out=data[a:b])  # type: ignore[misc]
                else:
                    link.recv_into(raw[a * isz:b * isz].data, op)
            with lane.cond:
                lane.done += 1
                lane.cond.notify()


def run(lanes: list[Lane], transfer: Transfer, pool: Executor,
        first_error: Callable[[BaseException], None]) -> BaseException | None:
    """Run every lane's sender and receiver (the caller's thread takes the first); return
    the first error, after `first_error(e)` told the peers and woke every other thread."""
    tasks = [(f, lane) for lane in lanes for f in (run_sender, run_receiver)]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run_one(fn: Callable[[Lane, Transfer], None], lane: Lane) -> None:
        try:
            fn(lane, transfer)
        except BaseException as e:  # re-raised by the calling thread
            with lock:
                errors.append(e)
                first = len(errors) == 1
            transfer.stop(lanes)
            if first:
                first_error(e)

    futures: list[Future] = [pool.submit(run_one, fn, lane) for fn, lane in tasks[1:]]
    run_one(*tasks[0])
    for f in futures:
        f.result()
    return errors[0] if errors else None
