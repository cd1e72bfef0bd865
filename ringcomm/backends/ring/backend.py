"""The TCP ring backend: needs nothing but NumPy and sockets.

Each group is a ring of its members; rank r holds one connection per lane to
its right neighbour (which it opened) and one from its left neighbour (which
that neighbour opened). Small messages take the latency path (every rank's
data travels once around the ring, then every rank reduces all of it in rank
order, so all ranks get the same bits); large ones the pipelined bandwidth
path of pipeline.py. send/recv go between any two ranks over connections
made on first use through each rank's listener.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, NoReturn

import numpy as np

from ... import environment, native, trace
from ...arrays import check_dtype
from ...errors import MismatchError, PeerError, RingcommError
from ...signature import REDUCTIONS, Op, ReduceOp, Signature
from ...transport import header, shm
from ...transport.endpoint import Endpoint
from ...transport.handshake import Hello, Kind
from ...transport.link import YIELD_SECONDS, Link, exchange
from ...transport.link import path as link_path
from ...transport.net import describe_errno, parse_address
from ...transport.net import exchange as socket_exchange
from ...transport.tcp import TcpLink
from ...transport.watch import Activity, GroupInfo
from ..base import Backend
from . import pipeline
from .local import _OPCODES, Local, Plan, _even

__all__ = ["RingBackend", "create"]

log = logging.getLogger("ringcomm")

# Messages take the latency path while each rank's traffic, (size-1) times the message, is at
# most this many bytes. Measured at p=2 on 2 cores, one run: at 128 KiB 93 us against 778 us for
# the pipelined ring (its thread hand-offs cost about 0.6 ms), at 2 MiB 0.8 ms against 1.5 ms,
# even at 4 MiB, and at 16 MiB the pipelined ring wins (10 ms against 18 ms).
SMALL_BYTES = 4 << 20
# The latency path polls this long for a reply before it blocks: at p=2 on 2 cores, 4-byte
# all_sum took 34 us without and 23 us with 10-30 us of polling (one run). It is off when the
# group has more ranks than this machine has cores, where polling would take a core from the
# rank that has to answer.
SPIN_SECONDS = 20e-6
_WORLD_ID = 1
# send/recv messages up to this size between ranks of one host take the compiled core's
# latency path (one call moves the header and the data).
P2P_SMALL_BYTES = 64 << 10
# All-reduces up to this size in a group of two ranks joined by TCP take the compiled core's
# exchange (one call sends, receives, checks and reduces): the decode step's 16 KiB and more.
PAIR_SMALL_BYTES = 64 << 10
_DONE = native.Codes.DONE
_MAIN = threading.main_thread()


def _tracked(method: Callable[..., None]) -> Callable[..., None]:
    """Record in the process's watch that a call of this group ended, however it ended.

    The watch answers peers' status queries from this record, so a call that
    returned must not look like one still waiting.
    """
    @functools.wraps(method)
    def call(self: RingBackend, *args: object) -> None:
        tracer = self._tracer
        if tracer is None:
            try:
                method(self, *args)
            finally:
                self._watch.leave(self._gid)
            return
        self._arrived = 0.0
        start = time.perf_counter()
        error = None
        try:
            method(self, *args)
        except BaseException as e:
            error = type(e).__name__
            raise
        finally:
            a = self._ep.watch.busy.get(self._gid, self._ep.watch.activity)
            self._ep.watch.leave(self._gid)
            end = time.perf_counter()
            arrived = self._arrived or start
            buf = args[0] if args and isinstance(args[0], np.ndarray) else None
            tracer.span(a.op, start, end, {
                "group": self._label, "call": a.seq, "bytes": 0 if buf is None else buf.nbytes,
                "path": self._path, "core": self.core,
                "wait_us": round((arrived - start) * 1e6, 1),
                "transfer_us": round((end - arrived) * 1e6, 1), "error": error})
    return call


def _nothing(raw: memoryview) -> None:
    return None


class P2pPlan(NamedTuple):
    """What a small send or recv of one kind (peer, dtype, shape) needs on every call."""

    channel: object  # the link's compiled end (ringcomm._native.Channel)
    lock: threading.Lock  # the wire lock of that way to that peer
    key: tuple[str, int]  # the message counter: ("out" or "in", the peer's world rank)
    template: bytes  # the header with message number 0
    world: int  # the peer's world rank
    peer: int  # its rank in the group
    shape: tuple[int, ...]
    dtype: np.dtype
    spin: float  # the short wait of a recv: spin this long, then yield until YIELD_SECONDS


class PairPlan(NamedTuple):
    """What a small all-reduce of one kind needs on every call in a group of two over TCP."""

    template: bytes  # this rank's header with call number 0
    rows: np.ndarray  # both ranks' messages (header and data) in rank order: (2, header + n)
    kind: int  # the core's element kind, or -1: Python reduces
    opcode: int  # the core's op (sum, max, min), or -1
    ufunc: np.ufunc
    sig: Signature  # the call with number 0 (for error messages)


# The first round of the shared-memory set-up carries a wake-up directory's path in this many
# int64 words (a socket's path holds at most 104 bytes on macOS, 108 on Linux).
_WAKE_PATH_WORDS = 13


def _child_id(parent: int, nth: int, color: int) -> int:
    digest = hashlib.blake2b(f"{parent}/{nth}/{color}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") | 2  # never the world's id


def _cores() -> int:
    """Return the number of cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RingBackend(Backend):
    """One group of the ring backend."""

    name = "ring"

    def __init__(self, ep: Endpoint, members: list[int], gid: int, label: str,
                 deadline: float) -> None:
        self._ep = ep
        self._members = members
        self._rank = members.index(ep.rank)
        self._size = len(members)
        self._gid = gid
        self._label = label
        self._seq = 0
        self._splits = 0
        self._pool: ThreadPoolExecutor | None = None
        self._scratch = np.empty(0, dtype=np.uint8)
        self._right: list[Link] = []  # one link per lane to the right neighbour
        self._left: list[Link] = []
        self._lanes = min(len(ep.addrs[w]) for w in members)
        self._spin = SPIN_SECONDS if self._size <= _cores() else 0.0
        self._watch = ep.watch
        self._tracer = ep.tracer
        ep.watch.groups[gid] = GroupInfo(label, tuple(members))
        self._path = "self"  # the path the current call takes: for the trace, the log and bench
        self._reduced = False
        self._channel_ran = False
        self._pair_ran = False  # whether the last all-reduce was one call of the core's exchange
        self._kinds: dict[tuple, str] = {}
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._arrived = 0.0  # when the current call first had a peer's header (traced calls)
        self._local: Local | None = None  # the host's ranks of this group, through shared memory
        self._shm: shm.Shared | None = None  # this group's segment on this host, if any
        self._ring_set = -1  # the segment's set of links for the ring, if it has one
        self._local_ranks: list[int] = []  # the group ranks on this host that share the segment
        self._pairs: dict[int, Link] | None = None  # a link to every other rank (all_to_all)
        self._across: RingBackend | None = None  # this rank's ring across hosts (hierarchical)
        # Small reductions of a group on one host or of two ranks over TCP, untraced: plans by
        # (op, dtype, shape), or None (this group has no fast path).
        self._fast: dict[tuple, Plan | PairPlan | None] | None = None
        # Small send/recv to a rank of this host through the compiled core, untraced: per
        # (way, peer, dtype, shape), what a call needs (P2pPlan), or None (it takes the link).
        self._p2p: dict[tuple, P2pPlan | None] | None = (
            {} if native.CORE is not None and self._tracer is None and not self._debug else None)
        if self._size > 1:
            right, left = self._world((self._rank + 1) % self._size), self._world(
                (self._rank - 1) % self._size)
            to, frm = self._peer((self._rank + 1) % self._size), self._peer(
                (self._rank - 1) % self._size)
            try:
                self._right = [TcpLink(ep.connect(right, Hello(Kind.RING, ep.rank, gid, c),
                                                  deadline, c), to, ep.timeout)
                               for c in range(self._lanes)]
                self._left = [TcpLink(ep.take(Kind.RING, left, gid, c, deadline,
                                              f"{label} set-up"), frm, ep.timeout)
                              for c in range(self._lanes)]
            except RingcommError as e:
                self._fail("set-up", e)
            if ep.shared_memory and shm.available():
                self._run_or_fail("set-up", lambda: self._share(deadline))
        # Two ranks joined by sockets (two hosts, or the ring across two hosts): small
        # all-reduces take the core's exchange, by (op, group, dtype, shape); untraced calls
        # of the API's fast entry by (op, dtype, shape).
        self._pair: dict[tuple, PairPlan] | None = None
        if (self._size == 2 and native.CORE is not None and self._local is None
                and self._right[0].kind == "tcp" and self._left[0].kind == "tcp"):
            self._pair = {}
            if self._tracer is None and not self._debug:
                self._fast = {}

    # -- helpers -----------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def path(self) -> str:
        """Return the transport and algorithm the last call took (shm-slot, tcp-pipeline, ...)."""
        return self._path

    @property
    def size(self) -> int:
        return self._size

    @property
    def core(self) -> str:
        """Return which core ran the last call: "native" (the compiled core ran its hot loop:
        a small reduction through shared memory or between two ranks over TCP, or a small send
        or recv moved whole through a link's channel) or "python"."""
        local = self._local
        if self._reduced and self._path == "shm-slot" and local is not None and local.core:
            return "native"
        if self._pair_ran and self._path == "tcp-latency":
            return "native"
        return "native" if self._path == "shm-p2p" and self._channel_ran else "python"

    def _world(self, r: int) -> int:
        return self._members[r]

    def _peer(self, r: int) -> str:
        name = self._ep.peer(self._world(r))
        return name if self._gid == _WORLD_ID else f"group rank {r}, world {name}"

    def _sig(self, op: Op, a: np.ndarray, arg: int = 0) -> Signature:
        self._ep.raise_if_aborted()
        self._seq += 1
        self._watch.begin(Activity(op.label, self._gid, self._seq, -1, time.monotonic(), True))
        self._path = "self"  # until a path that moves data is taken
        self._reduced = False  # whether the call is a reduction (the core runs those)
        self._channel_ran = False  # whether a send or recv was one call of a link's channel
        self._pair_ran = False
        return Signature(op, self._seq, self._gid, a.dtype, tuple(a.shape), self._rank, arg)

    def _checker(self, mine: Signature, src: int) -> Callable[[memoryview], None]:
        def check(raw: memoryview) -> None:
            if not self._arrived:
                self._arrived = time.perf_counter()
            theirs = header.unpack(raw)
            if theirs is None:
                raise PeerError(f"{mine.op.label}: {self._peer(src)} sent bytes that are not a "
                                "ringcomm message (a different ringcomm version?)")
            what = mine.differs(theirs)
            if what is not None:
                who = theirs.rank if 0 <= theirs.rank < self._size else src
                raise MismatchError(
                    f"{mine.op.label} mismatch in the {self._label} group: rank {self._rank} "
                    f"called {mine.describe()} but rank {who} called {theirs.describe()}: {what}; "
                    "every rank must make the same calls in the same order with the same dtype "
                    "and shape"
                )
        return check

    def _fail(self, op: str, exc: BaseException) -> NoReturn:
        """Turn a failure into the error every rank raises, and tell the other ranks."""
        self._ep.aborts.fail(op, exc, self._ep.watch.blame)

    def _took(self, path: str, sig: Signature) -> None:
        """Note the path the current call takes (for the trace), and log it at DEBUG."""
        self._path = path
        if self._debug:
            log.debug("%s [call #%d] of the %s group: %s path", sig.op.label, sig.seq, self._label,
                      path)

    def _pool_for(self, n: int) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ringcomm-lane")
        return self._pool

    def _small(self, nbytes: int) -> bool:
        """Return whether a message of `nbytes` per rank takes the latency path."""
        return nbytes * (self._size - 1) <= SMALL_BYTES

    def _buffer(self, nbytes: int) -> np.ndarray:
        if self._scratch.nbytes < nbytes:
            self._scratch = np.empty(max(nbytes, 2 * self._scratch.nbytes), dtype=np.uint8)
        return self._scratch[:nbytes]

    # -- the two paths -----------------------------------------------------------------------

    def _gather_small(self, flat: np.ndarray, sig: Signature) -> np.ndarray:
        """Pass every rank's `flat` once around the ring; return the (size, n) array of them.

        Each slot is a header followed by the data, so one send and usually one
        receive per step carry both, and a forwarded header still names its origin.
        """
        self._took(self._kind("latency"), sig)
        p, r, hs = self._size, self._rank, header.SIZE
        n = flat.nbytes
        slot = hs + n
        slots = self._buffer(p * slot).reshape(p, slot)
        slots[r, :hs] = np.frombuffer(header.pack(sig), dtype=np.uint8)
        slots[r, hs:] = flat.view(np.uint8)
        right, left = self._right[0], self._left[0]
        op = sig.op.label
        check = self._checker(sig, (r - 1) % p)
        # Polling helps a caller that waits for the reply; a call run in the background
        # (async_op) would only take the core and the interpreter from the caller's compute.
        spin = self._spin if threading.current_thread() is _MAIN else 0.0
        for s in range(p - 1):
            out_i, in_i = (r - s) % p, (r - s - 1) % p
            exchange(right, memoryview(slots[out_i]), left, memoryview(slots[in_i]), hs, check,
                     op=op, spin=spin)
        return slots[:, hs:]

    def _doubles(self) -> bool:
        """Return whether small all-reduces take recursive doubling (else the ring): with a
        power of two ranks past 2, it takes log2(p) exchanges where the ring takes p - 1."""
        p, choice = self._size, self._ep.algorithm
        return choice != "ring" and p > 2 and p & (p - 1) == 0

    def _gather_doubling(self, flat: np.ndarray, sig: Signature) -> np.ndarray:
        """Give every rank every rank's `flat` by recursive doubling; return the (size, n) rows.

        At step k each rank exchanges the 2**k slots (header and data) it holds with rank
        r xor 2**k, over a direct link, and checks every header it receives: log2(p)
        exchanges, each rank's data reaching every other once.
        """
        p, r, hs = self._size, self._rank, header.SIZE
        slot = hs + flat.nbytes
        slots = self._buffer(p * slot).reshape(p, slot)
        slots[r, :hs] = np.frombuffer(header.pack(sig), dtype=np.uint8)
        slots[r, hs:] = flat.view(np.uint8)
        links = self._pair_links(time.monotonic() + self._ep.timeout)
        self._took(link_path(list(links.values()), "doubling"), sig)
        op = sig.op.label
        spin = self._spin if threading.current_thread() is _MAIN else 0.0
        k = 1
        while k < p:
            partner = r ^ k
            mine, theirs = r & ~(k - 1), partner & ~(k - 1)
            link = links[partner]
            got = slots[theirs:theirs + k]
            exchange(link, slots[mine:mine + k].reshape(-1).data, link, got.reshape(-1).data, hs,
                     self._checker(sig, theirs), op=op, spin=spin)
            for j in range(1, k):  # the first was checked on arrival
                self._checker(sig, theirs + j)(got[j, :hs].data)
            k <<= 1
        return slots[:, hs:]

    def _reduce_small(self, flat: np.ndarray, out: np.ndarray, ufunc: Callable,
                      sig: Signature) -> None:
        plans = self._pair
        if plans is not None and 0 < flat.nbytes <= PAIR_SMALL_BYTES:
            key = (sig.op, sig.group, sig.dtype, sig.shape, sig.rank)  # all the header holds
            plan = plans.get(key)
            if plan is None:
                if len(plans) >= 256:  # a program of many kinds: start again
                    plans.clear()
                plan = plans[key] = self._pair_plan(sig._replace(seq=0), flat.dtype, ufunc)
            self._took("tcp-latency", sig)
            return self._pair_reduce(flat, out, plan, sig.seq, False)
        raw = (self._gather_doubling if self._doubles() else self._gather_small)(flat, sig)
        rows = [raw[i].view(flat.dtype) for i in range(self._size)]
        ufunc(rows[0], rows[1], out=out)
        for row in rows[2:]:  # rank order on every rank: the same bits everywhere
            ufunc(out, row, out=out)

    # -- two ranks over TCP: the compiled core's exchange -----------------------------------

    def _pair_plan(self, sig: Signature, dtype: np.dtype, ufunc: Callable) -> PairPlan:
        n = int(np.prod(sig.shape, dtype=np.int64)) * dtype.itemsize
        opcode = _OPCODES.get(ufunc, -1)
        return PairPlan(header.pack(sig), np.empty((2, header.SIZE + n), np.uint8),
                        native.kind(dtype) if opcode >= 0 else -1, opcode,
                        ufunc, sig)  # type: ignore[arg-type]

    def _pair_reduce(self, src: np.ndarray, out: np.ndarray, plan: PairPlan, seq: int,
                     lean: bool) -> None:
        """All-reduce `src` (contiguous) with the other rank into `out`: one call of the core
        sends this rank's message, takes the other's, checks its header and reduces both in
        rank order; where its short wait runs out, the socket loop goes on from there.
        `lean`: a call of the fast entry, which the watch records only when it has to block.
        """
        right, left = self._right[0], self._left[0]
        self._path, self._pair_ran = "tcp-latency", True
        spin = self._spin if threading.current_thread() is _MAIN else 0.0
        code, sent, got, out_errno, in_errno = native.CORE.pair_allreduce(  # type: ignore[union-attr]
            right.sock.fileno(), left.sock.fileno(), plan.rows, self._rank,  # type: ignore[attr-defined]
            plan.template, seq, src, out, plan.kind, plan.opcode, spin)
        if code == _DONE:
            if self._tracer is not None:
                self._arrived = time.perf_counter()  # the reply was there within the call
            return
        label = plan.sig.op.label
        if code == native.Codes.GONE:
            link, err = (right, out_errno) if out_errno else (left, in_errno)
            if err > 0:
                raise PeerError(f"{label}: connection to {link.peer} failed: "
                                f"{describe_errno(OSError(err, os.strerror(err)))}")
            raise PeerError(f"{label}: {link.peer} closed the connection (did it exit or crash?)")
        r, hs = self._rank, header.SIZE
        mine, theirs = plan.rows[r], plan.rows[1 - r]
        check = self._checker(plan.sig._replace(seq=seq), 1 - r)
        if code == native.Codes.MISMATCH:
            check(theirs[:hs].data)
            raise PeerError(f"{label}: the headers of the {self._label} group differ, yet match "
                            "when read again (memory corrupted?)")
        if code == native.Codes.PENDING:
            watch = self._watch if lean else None
            if watch is not None:
                watch.begin(Activity(label, self._gid, seq, -1, time.monotonic(), True))
            try:
                socket_exchange(right.sock, mine.data, left.sock,  # type: ignore[attr-defined]
                                theirs.data, hs, check, left.timeout, peer_out=right.peer,
                                peer_in=left.peer, op=label, sent=sent, got=got)
            finally:
                if watch is not None:
                    watch.leave(self._gid)
        dt = plan.sig.dtype
        plan.ufunc(plan.rows[0, hs:].view(dt), plan.rows[1, hs:].view(dt), out=out.reshape(-1))

    def _run(self, src: np.ndarray, data: np.ndarray, blocks: list[tuple[int, int]], n_rs: int,
             n_ag: int, ufunc: Callable | None, sig: Signature) -> None:
        """Run the pipelined ring over all lanes in both directions, from `src` into `data`."""
        self._took(self._kind("pipeline"), sig)
        transfer = pipeline.Transfer(data, src, ufunc, sig)
        lanes = pipeline.lanes(self._rank, self._size, self._right, self._left, blocks, n_rs,
                               n_ag, lambda frm: self._checker(sig, frm))
        self._execute(sig.op.label, [(f, lane) for lane in lanes
                                     for f in (pipeline.run_sender, pipeline.run_receiver)],
                      transfer, lanes)

    def _execute(self, op: str, tasks: list, transfer: pipeline.Transfer,
                 lanes: list[pipeline.Lane]) -> None:
        errors: list[BaseException] = []
        lock = threading.Lock()

        def run_lane(fn: Callable, lane: pipeline.Lane) -> None:
            try:
                fn(lane, transfer)
            except BaseException as e:  # re-raised by the calling thread
                with lock:
                    errors.append(e)
                    first = len(errors) == 1
                transfer.stop(lanes)
                if first:  # one thread tells the peers, and only then closes connections
                    if isinstance(e, RingcommError):
                        self._ep.aborts.announce(op, e)
                    self._wake()

        pool = self._pool_for(len(tasks))
        futures: list[Future] = [pool.submit(run_lane, fn, lane) for fn, lane in tasks[1:]]
        run_lane(*tasks[0])
        for f in futures:
            f.result()
        if errors:
            self._fail(op, errors[0])

    def _wake(self) -> None:
        """Unblock every thread of this group's collective after one of them failed."""
        for link in self._right + self._left:
            link.shutdown()

    def _kind(self, algorithm: str) -> str:
        """Return the path name of `algorithm` over this ring's links: tcp-, shm- or mixed-."""
        key = (algorithm, id(self._right[0]), id(self._left[0]))
        name = self._kinds.get(key)
        if name is None:
            name = self._kinds[key] = link_path(self._right[:1] + self._left[:1], algorithm)
        return name

    # -- shared memory -------------------------------------------------------------------------

    def _host_of(self, r: int) -> str:
        """Return the host of group rank `r`: its rendezvous host name, else its address."""
        w, names = self._world(r), self._ep.host_names
        return names[w] if names is not None else self._ep.addrs[w][0].host

    def _setup_round(self, mine: np.ndarray) -> np.ndarray:
        """Gather one int64 row from every rank of the group (over the TCP ring)."""
        sig = Signature(Op.SETUP, 0, self._gid, mine.dtype, tuple(mine.shape), self._rank)
        rows = self._gather_small(mine, sig)
        return rows.copy().view(np.int64).reshape(self._size, -1)

    def _share(self, deadline: float) -> None:
        """Share memory with this group's ranks on this host, where the layout allows.

        Every rank decides from the same table of hosts:
        - all ranks on one host: the collectives use shared memory as memory (`Local`);
        - several hosts with the same number of ranks each: hierarchical, `Local` inside a
          host and one ring across hosts per local rank;
        - hosts with different numbers of ranks: the flat ring.
        Wherever the flat ring spans hosts (the collectives that are not hierarchical take
        it too), its neighbours on one host are joined by shared-memory links, not sockets.
        The world group's segment also holds a link between every two ranks of the host,
        which send/recv take. Two rounds over the TCP ring make it all or nothing: when a
        rank cannot create or map the segment, every rank of the group keeps TCP.
        """
        hosts: dict[str, list[int]] = {}
        for r in range(self._size):
            hosts.setdefault(self._host_of(r), []).append(r)
        counts = {len(v) for v in hosts.values()}
        if counts == {1}:
            return  # one rank per host: TCP everywhere
        even = len(counts) == 1
        p = self._size
        # Ring neighbours on one host (the ring spans hosts): joined by shared-memory links.
        neighbours = len(hosts) > 1 and any(self._host_of(r) == self._host_of((r + 1) % p)
                                            for r in range(p))
        # Link sets: the world's for send/recv, one for the ring's neighbours on this host.
        p2p, ring = int(self._gid == _WORLD_ID), int(neighbours)
        links = p2p + ring
        local = hosts[self._host_of(self._rank)]
        index, count = local.index(self._rank), len(local)
        size, chunk, cap = shm.Shared.size_for(count, staging=even, links=links)
        parts = (self._ep.key, self._gid, tuple(self._members), tuple(local))
        right, left = (self._rank + 1) % p, (self._rank - 1) % p
        mem = None
        name = wakes = ""
        problem = ""
        if index == 0 and count > 1:
            shm.sweep()
            name = shm.segment_name(os.getpid(), *parts)
            try:
                mem = shm.create(name, size)
            except OSError as e:
                problem = f"could not create {size / 2**20:.1f} MiB of shared memory: {e}"
            else:
                try:
                    wakes = shm.wake_directory()
                except OSError as e:
                    problem = f"could not create a private directory for wake-ups: {e}"
        # The first round carries every rank's pid and whether it is ready, and from the first
        # rank of a host the path of its private wake-up directory.
        path = os.fsencode(wakes)
        if len(path) > 8 * _WAKE_PATH_WORDS:
            problem, path = f"the temporary directory's path {wakes!r} is too long for socket " \
                "names: set TMPDIR to a shorter one", b""
        words = np.frombuffer(path.ljust(8 * _WAKE_PATH_WORDS, b"\0"), dtype=np.int64)
        table = self._setup_round(np.concatenate(
            [np.array([os.getpid(), 0 if problem else 1], dtype=np.int64), words]))
        pids = [int(table[r, 0]) for r in local]
        shared = None
        links_to: dict[tuple[int, int], Link] = {}
        if table[:, 1].all() and count > 1:
            try:
                if index != 0:
                    name = shm.segment_name(pids[0], *parts)
                    mem = shm.attach(name, size)
                    wakes = os.fsdecode(table[local[0], 2:].tobytes().rstrip(b"\0"))
                    shm.check_wake_directory(wakes)
                gone = [pid for pid in pids if not shm.alive(pid)]
                if gone:
                    problem = f"the processes {gone} of this host's ranks are not visible here"
                else:
                    assert mem is not None
                    shared = shm.Shared(mem, wakes, index, count, chunk, pids, self._ep.timeout,
                                        count <= _cores(), lambda j: self._peer(local[j]),
                                        self._ep.raise_if_aborted, cap, links)
                    # Every link this rank takes, made (and its wake-ups bound) before the
                    # second round, so that a failure leaves the whole group on TCP.
                    if p2p:
                        for j in range(count):
                            if j != index:
                                links_to[j, 0] = shared.link(j)
                    if neighbours:  # the ring's neighbours, and all_to_all's pairs on this host
                        for j in range(count):
                            if j != index:
                                links_to[j, p2p] = shared.link(j, p2p)
            except OSError as e:
                problem = f"could not map the shared memory {name}: {e}"
        ok = count == 1 or (not problem and shared is not None)
        done = self._setup_round(np.array([1 if ok else 0], dtype=np.int64))
        if index == 0 and name:
            shm.unlink(name)  # every local rank has mapped it (or given up): the name can go
        if done.all():
            # Every wake-up socket is bound: connect to them, then no name is needed. A third
            # round (every rank of the group takes it) keeps the directory until every local
            # rank has connected.
            if shared is not None:
                try:
                    shared.join()
                except OSError as e:
                    problem = f"could not reach this host's ranks' wake-up sockets: {e}"
            done = self._setup_round(np.array([0 if problem else 1], dtype=np.int64))
        if index == 0 and wakes:
            shm.remove_wake_directory(wakes)
        if problem:
            log.warning("ringcomm rank %d: %s; the %s group uses TCP (give /dev/shm more room, "
                        "e.g. docker --shm-size, or set %s=tcp to skip shared memory)",
                        self._ep.rank, problem, self._label, environment.TRANSPORT)
        if not done.all():
            if shared is not None:
                shared.close()
            elif mem is not None:
                mem.close()
            return
        if neighbours:
            # A shared-memory link is one lane, so every rank (they all see the same table)
            # runs one lane per neighbour.
            for extra in self._right[1:] + self._left[1:]:
                extra.close()
            self._right, self._left, self._lanes = self._right[:1], self._left[:1], 1
        if shared is None:
            return  # the only rank of its host in an uneven layout: its links are TCP
        self._ep.aborts.hooks.append(shared.abandon)
        self._shm = shared
        self._local_ranks = local
        if neighbours:
            self._ring_set = p2p
        if self._gid == _WORLD_ID:
            self._ep.local_links = {self._world(r): links_to[j, 0]
                                    for j, r in enumerate(local) if j != index}
        if neighbours:
            if right in local:
                self._right[0].close()
                self._right = [links_to[local.index(right), p2p]]
            if left in local:
                self._left[0].close()
                self._left = [links_to[local.index(left), p2p]]
        if not even:
            return
        self._local = Local(shared, self._label, self._watch, self._gid)
        if len(hosts) == 1 and self._tracer is None and not self._debug:
            self._fast = {}
        if len(hosts) > 1:
            across = [members[index] for members in hosts.values()]
            self._across = RingBackend(self._ep, [self._world(r) for r in across],
                                       _child_id(self._gid, -1, index),
                                       f"{self._label}.across({index})", deadline)

    def _shared(self, sig: Signature, fn: Callable[[Local], str]) -> None:
        """Run `fn` on this host's shared memory (when every rank is on this host)."""
        local = self._local
        assert local is not None

        def run() -> None:
            path = fn(local)
            self._took(path, sig)
        self._run_or_fail(sig.op.label, run)

    def _agree(self, sig: Signature) -> None:
        """Hierarchical groups: check the call on this host, then across hosts, before data moves.

        Each local rank checks on its own ring across hosts, so every such ring and
        thus every rank learns of a host whose ranks make another call.
        """
        local, across = self._local, self._across
        assert local is not None and across is not None
        local.check(sig)
        across._gather_small(np.empty(0, np.uint8), sig._replace(rank=across.rank))

    # -- collectives ---------------------------------------------------------------------------

    def _run_or_fail(self, op: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except RingcommError as e:
            self._fail(op, e)

    @_tracked
    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        sig = self._sig(REDUCTIONS[op], src)
        self._reduced = True
        if self._size == 1 or src.size == 0:
            if out is not src:
                np.copyto(out, src)
            return self._check_call(sig, src)
        flat, dst, ufunc = src.reshape(-1), out.reshape(-1), op.ufunc
        if self._local is not None:
            if self._across is None:
                try:  # the latency-critical path: no closures
                    self._path = self._local.all_reduce(flat, dst, ufunc, sig)
                except RingcommError as e:
                    self._fail(sig.op.label, e)
                if self._debug:
                    self._took(self._path, sig)
                return
            return self._run_or_fail(sig.op.label,
                                     lambda: self._hierarchical(flat, dst, ufunc, sig))
        self._reduce(flat, dst, ufunc, sig)

    def reduce_small(self, x: np.ndarray, op: ReduceOp) -> np.ndarray | None:
        """The latency path of a group on one host, or of two ranks over TCP: `all_reduce_into`
        of a small array without the per-call work that can be made once (signature, header,
        views, buffers: the Plan or PairPlan).

        The call is numbered, checked against every rank's header and, when it has to
        block, recorded in the watch, as every call is.
        """
        plans = self._fast
        if plans is None:
            return None
        key = (op, x.dtype, x.shape)
        plan = plans.get(key)
        if plan is None:
            if key in plans:
                return None  # a kind the fast path does not take
            plan = plans[key] = self._plan(x, op)
            if plan is None:
                return None
        if not x.flags.c_contiguous:
            return None
        aborts = self._ep.aborts
        if aborts._reason is not None:
            aborts.raise_if_stopped()
        seq = self._seq = self._seq + 1
        out = np.empty(plan.sig.shape, plan.sig.dtype)
        local = self._local
        try:
            if local is not None:
                local.reduce_small(x, out, plan, seq)  # type: ignore[arg-type]
                self._path = "shm-slot"
            else:
                self._pair_reduce(x, out, plan, seq, True)  # type: ignore[arg-type]
        except RingcommError as e:
            self._fail(plan.sig.op.label, e)
        self._watch.done[self._gid] = seq
        self._reduced = True
        return out

    def _plan(self, x: np.ndarray, op: ReduceOp) -> Plan | PairPlan | None:
        """Return the plan of fast reductions like `x`, or None where they take another path."""
        kind = REDUCTIONS[op]
        check_dtype(x.dtype, kind.label)
        local = self._local
        most = local.small if local is not None else PAIR_SMALL_BYTES
        if x.size == 0 or x.nbytes > most or len(self._fast or ()) > 256:
            return None
        sig = Signature(kind, 0, self._gid, x.dtype, tuple(x.shape), self._rank)
        if local is not None:
            return local.plan(sig, op.ufunc)
        return self._pair_plan(sig, x.dtype, op.ufunc)

    def _reduce(self, flat: np.ndarray, dst: np.ndarray, ufunc: Callable, sig: Signature) -> None:
        """All-reduce over the TCP ring."""
        if self._small(flat.nbytes) or flat.size < 2 * self._lanes * self._size:
            return self._run_or_fail(sig.op.label, lambda: self._reduce_small(flat, dst, ufunc, sig))
        # Every element of dst is written by a reduce-scatter or an all-gather step.
        self._run(flat, dst, pipeline.even(flat.size, self._size), self._size - 1, self._size - 1,
                  ufunc, sig)

    def _hierarchical(self, flat: np.ndarray, dst: np.ndarray, ufunc: Callable,
                      sig: Signature) -> None:
        """Reduce on this host, then across hosts (each local rank its slice), then share.

        A message that fits a slot takes three steps instead: every local rank reduces
        the host's data (one post), the host's first rank all-reduces that across hosts
        on its ring (one small exchange: doubling or the ring), and shares the result
        on the host (one post). The others wait for it meanwhile.
        """
        local, across = self._local, self._across
        assert local is not None and across is not None
        if flat.nbytes <= local.small and self._ep.algorithm != "ring":
            self._took("shm+tcp-hierarchical-small", sig)
            local.reduce_small(flat, dst, local.plan(sig._replace(seq=0), ufunc), sig.seq)
            if local.rank == 0:
                across._reduce(dst, dst, ufunc, sig._replace(rank=across.rank))
            local.broadcast(dst.view(np.uint8), 0, sig)
            return
        self._took("shm+tcp-hierarchical", sig)
        bounds = _even(flat.size, local.size)
        a, b = bounds[local.rank]
        mine = dst[a:b]
        local.reduce_slices(flat, mine, bounds, ufunc, sig)
        # The ring across hosts checks the group's call (not a call of its own): a host
        # whose ranks make another call is found there.
        across._reduce(mine, mine, ufunc, sig._replace(rank=across.rank))
        local.gather_slices(mine, dst, bounds, sig)

    def _check_call(self, sig: Signature, buf: np.ndarray) -> None:
        """Check that every rank made the same call, where no data needs to move.

        A zero-byte gather around the ring carries only the headers.
        """
        if self._size == 1:
            return
        if self._local is not None:
            if self._across is None:
                return self._shared(sig, lambda local: local.check(sig))
            return self._run_or_fail(sig.op.label, lambda: self._agree(sig))
        self._run_or_fail(sig.op.label, lambda: self._gather_small(buf.reshape(-1)[:0], sig))

    @_tracked
    def all_gather(self, buf: np.ndarray, out: np.ndarray, op: Op = Op.ALL_GATHER,
                   arg: int = 0) -> None:
        sig = self._sig(op, buf, arg)
        p, n = self._size, buf.size
        if p == 1 or n == 0:
            out.reshape(-1)[:n] = buf.reshape(-1)
            return self._check_call(sig, buf)
        flat = out.reshape(-1)
        if self._local is not None and self._across is None:
            return self._shared(sig, lambda local: local.all_gather(buf.reshape(-1), flat, sig))
        if self._across is not None:
            self._run_or_fail(sig.op.label, lambda: self._agree(sig))
        if self._small(buf.nbytes):
            def small() -> None:
                rows = self._gather_small(buf.reshape(-1), sig)
                flat.view(np.uint8).reshape(p, -1)[...] = rows
            return self._run_or_fail(sig.op.label, small)
        flat[self._rank * n:(self._rank + 1) * n] = buf.reshape(-1)
        self._run(flat, flat, [(i * n, (i + 1) * n) for i in range(p)], 0, p - 1, None, sig)

    @_tracked
    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        sig = self._sig(Op.SUM_SCATTER, buf)
        p, m = self._size, out.size
        flat = buf.reshape(-1)
        if p == 1 or m == 0:
            out.reshape(-1)[...] = flat[:m]
            return self._check_call(sig, buf)
        ufunc = op.ufunc
        if self._local is not None and self._across is None:
            return self._shared(sig, lambda local: local.reduce_scatter(flat, out.reshape(-1),
                                                                        ufunc, sig))
        if self._across is not None:
            self._run_or_fail(sig.op.label, lambda: self._agree(sig))
        if self._small(flat.nbytes):
            def small() -> None:
                rows = self._gather_small(flat, sig)
                mine = [rows[i].view(flat.dtype)[self._rank * m:(self._rank + 1) * m]
                        for i in range(p)]
                dst = out.reshape(-1)
                ufunc(mine[0], mine[1], out=dst)
                for row in mine[2:]:
                    ufunc(dst, row, out=dst)
            return self._run_or_fail(sig.op.label, small)
        # Reduce-scatter writes only the segments it reduces; the input stays as it was.
        work = np.empty_like(flat)
        self._run(flat, work, [(i * m, (i + 1) * m) for i in range(p)], p - 1, 0, ufunc, sig)
        out.reshape(-1)[...] = work[self._rank * m:(self._rank + 1) * m]

    @_tracked
    def broadcast(self, buf: np.ndarray, root: int, kind: Op = Op.BROADCAST) -> None:
        sig = self._sig(kind, buf, root)
        p, r = self._size, self._rank
        if p == 1:
            return
        raw = buf.reshape(-1).view(np.uint8)
        op = sig.op.label
        if self._local is not None and self._across is None:
            return self._shared(sig, lambda local: local.broadcast(raw, root, sig))
        if self._across is not None:
            self._run_or_fail(op, lambda: self._agree(sig))
        if self._small(raw.nbytes):
            # Every rank's slot, header included, passes every other rank: each rank checks
            # every call itself, so ranks that disagree (on the root too) all raise at once.
            def small() -> None:
                rows = self._gather_small(raw, sig)
                if r != root:
                    raw[...] = rows[root]
            return self._run_or_fail(op, small)
        left, right = self._left[0], self._right[0]

        def relay() -> None:
            # First every rank checks every call (the headers alone go around the ring), so a
            # rank sends or waits for data only once all agree on the root. The last rank of
            # the chain then sends its header to the root once it has all the data, so the
            # root, which needs nobody else's data, returns only when the chain finished.
            self._gather_small(raw[:0], sig)
            self._took(self._kind("relay"), sig)
            last = (r + 1) % p == root
            for a, b in pipeline.chunks(0, raw.size, pipeline.CHUNK_BYTES):
                piece = raw[a:b].data
                if r != root and b > a:
                    left.recv_into(piece, op)
                if not last and b > a:
                    right.send(piece, op)
            if last:
                right.send(header.pack(sig), op)
            if r == root:
                hdr = bytearray(header.SIZE)
                left.recv_into(memoryview(hdr), op)
                self._checker(sig, (r - 1) % p)(memoryview(hdr))

        self._run_or_fail(op, relay)

    @_tracked
    def barrier(self) -> None:
        token = np.zeros(1, dtype=np.uint8)
        sig = self._sig(Op.BARRIER, token)
        if self._size == 1:
            return
        if self._local is None:
            return self._run_or_fail("barrier", lambda: self._gather_small(token, sig))
        self._check_call(sig, token)
        if self._across is not None:  # no rank leaves before every host has arrived
            self._shared(sig, lambda local: local.check(sig))

    # all_to_all, gather and scatter: shared memory does all_to_all directly; elsewhere they
    # are an all_gather or a broadcast that checks the call under its own name.

    @_tracked
    def _all_to_all_shared(self, buf: np.ndarray, out: np.ndarray) -> None:
        sig = self._sig(Op.ALL_TO_ALL, buf)
        if buf.size == 0:
            return self._check_call(sig, buf)
        self._shared(sig, lambda local: local.all_to_all(buf.reshape(-1), out.reshape(-1), sig))

    def all_to_all(self, buf: np.ndarray, out: np.ndarray) -> None:
        if self._size == 1:
            return super().all_to_all(buf, out)
        if self._local is not None and self._across is None:
            return self._all_to_all_shared(buf, out)
        self._all_to_all_pairs(buf, out)

    @_tracked
    def _all_to_all_pairs(self, buf: np.ndarray, out: np.ndarray) -> None:
        """all_to_all as p-1 direct exchanges: at step s, send block r+s and receive block r-s.

        Every step first exchanges the call headers alone, so every rank checks every other
        rank's call before any data moves; then the blocks go straight from `buf` into
        `out`. Each byte crosses one link once (the ring would carry p times as much).
        """
        sig = self._sig(Op.ALL_TO_ALL, buf)
        if buf.size == 0:
            return self._check_call(sig, buf)
        p, r, op = self._size, self._rank, sig.op.label
        blocks = buf.reshape(p, -1).view(np.uint8)
        got = out.reshape(p, -1).view(np.uint8)

        def run() -> None:
            links = self._pair_links(time.monotonic() + self._ep.timeout)
            self._took(link_path(list(links.values()), "pairs"), sig)
            got[r] = blocks[r]
            hdr = memoryview(header.pack(sig))
            theirs = memoryview(bytearray(header.SIZE))
            for s in range(1, p):
                dst, src = (r + s) % p, (r - s) % p
                exchange(links[dst], hdr, links[src], theirs, header.SIZE,
                         self._checker(sig, src), op=op)
                exchange(links[dst], memoryview(blocks[dst]), links[src],
                         memoryview(got[src]), 0, _nothing, op=op)
        self._run_or_fail(op, run)

    def _pair_links(self, deadline: float) -> dict[int, Link]:
        """Return a link to every other rank of the group, made on first use.

        Ranks on this host share the ring's set of shared-memory links where the group
        has one; the others get a TCP connection, opened by the lower group rank.
        """
        if self._pairs is not None:
            return self._pairs
        ep, r, local = self._ep, self._rank, self._local_ranks
        pairs: dict[int, Link] = {}
        for q in range(self._size):
            if q == r:
                continue
            if self._shm is not None and self._ring_set >= 0 and q in local:
                pairs[q] = self._shm.link(local.index(q), self._ring_set)
            elif r < q:
                s = ep.connect(self._world(q), Hello(Kind.PAIR, ep.rank, self._gid), deadline)
                pairs[q] = TcpLink(s, self._peer(q), ep.timeout)
            else:
                s = ep.take(Kind.PAIR, self._world(q), self._gid, 0, deadline,
                            f"{self._label} all_to_all set-up")
                pairs[q] = TcpLink(s, self._peer(q), ep.timeout)
        self._pairs = pairs
        return pairs

    def _all_gather_as(self, buf: np.ndarray, out: np.ndarray, op: Op, root: int) -> None:
        self.all_gather(buf, out, op, root)

    def _broadcast_as(self, buf: np.ndarray, root: int, op: Op) -> None:
        self.broadcast(buf, root, op)

    # -- point to point ----------------------------------------------------------------------

    def _p2p_call(self, op: str, peer: int) -> tuple[int, int]:
        """Begin a send or recv with group rank `peer`: return (its world rank, message number).

        Messages are numbered per ordered pair of world ranks; the watch records the call.
        """
        ep, w = self._ep, self._world(peer)
        ep.raise_if_aborted()
        with ep.p2p_lock:
            seq = ep.next_seq(("out" if op == "send" else "in", w))
        ep.watch.enter(op, self._gid, seq, w)
        self._path = "p2p"  # until the link is known: shm-p2p or tcp-p2p
        return w, seq

    @_tracked
    def send(self, buf: np.ndarray, dst: int) -> None:
        ep = self._ep
        w, seq = self._p2p_call("send", dst)

        def go() -> None:
            with ep.wire_lock("out", w):
                self._send(buf, w, seq)
        self._run_or_fail("send", go)

    def _send(self, buf: np.ndarray, w: int, seq: int) -> None:
        """Send message `seq` to world rank `w` (its wire lock held)."""
        sig = Signature(Op.SEND, seq, self._gid, buf.dtype, tuple(buf.shape), self._rank)
        link = self._ep.p2p_out(w)
        self._path, self._channel_ran = f"{link.kind}-p2p", False
        link.send(header.pack(sig), "send")
        if buf.nbytes:
            link.send(buf.reshape(-1).view(np.uint8).data, "send")

    @_tracked
    def recv(self, out: np.ndarray, src: int) -> None:
        ep = self._ep
        w, seq = self._p2p_call("recv", src)

        def go() -> None:
            with ep.wire_lock("in", w):
                self._receive(out, src, w, seq)
        self._run_or_fail("recv", go)

    def _receive(self, out: np.ndarray, src: int, w: int, seq: int) -> None:
        """Receive message `seq` from group rank `src` (world rank `w`) into `out` (its wire
        lock held): check its header against this call, then take its data."""
        mine = Signature(Op.SEND, seq, self._gid, out.dtype, tuple(out.shape), self._rank)
        link = self._ep.p2p_in(w, f"recv from {self._peer(src)}")
        self._path, self._channel_ran = f"{link.kind}-p2p", False
        hdr = bytearray(header.SIZE)
        link.recv_into(memoryview(hdr), "recv")
        theirs = header.unpack(hdr)
        if theirs is None:
            raise PeerError(f"recv: {self._peer(src)} sent bytes that are not a message")
        what = mine.differs(theirs)
        if what is not None:
            raise MismatchError(
                f"recv mismatch in the {self._label} group: rank {self._rank} expects "
                f"{out.dtype} shape {tuple(out.shape)} from rank {src}, which sent "
                f"{theirs.describe()} as message #{theirs.seq} (expected #{seq}): {what}"
            )
        if out.nbytes:
            link.recv_into(out.reshape(-1).view(np.uint8).data, "recv")

    # The latency path of send and recv between two ranks of one host: a plan per kind, one
    # call of the compiled core that moves the whole message, and, where it cannot (no room,
    # not there yet, a header that differs), the calls above with the same message number.

    def send_small(self, x: np.ndarray, dst: int) -> bool:
        """Send the C-contiguous NumPy array `x` to group rank `dst` on the latency path;
        return False (nothing done) where the call takes `send` instead."""
        plans = self._p2p
        if plans is None:
            return False
        key = ("out", dst, x.dtype, x.shape)
        plan = plans.get(key)
        if plan is None:
            if key in plans:
                return False
            plan = plans[key] = self._p2p_plan("send", "send", dst, x.dtype, x.shape)
            if plan is None:
                return False
        if not x.flags.c_contiguous:
            return False
        ep = self._ep
        if ep.aborts._reason is not None:
            ep.aborts.raise_if_stopped()
        lock = plan.lock
        if not lock.acquire(False):
            return False  # another thread of this rank sends there now
        try:
            with ep.p2p_lock:
                seq = ep.next_seq(plan.key)
            self._path = "shm-p2p"
            self._channel_ran = plan.channel.send(  # type: ignore[attr-defined]
                plan.template, seq, x) == _DONE
            if not self._channel_ran:
                self._send_rest(x, plan.world, seq)  # no room: wait for it as send does
        finally:
            lock.release()
        return True

    def recv_small(self, key: tuple, shape: object, dtype: object, src: int,
                   op: str = "recv") -> np.ndarray | None:
        """Return the array of `shape` and `dtype` that group rank `src` sent, on the latency
        path (`key` names the kind: ("in", src, dtype, shape) as the caller spelled them);
        None (nothing done) where the call takes `recv` instead. `op` names the call in
        errors of its arguments."""
        plans = self._p2p
        if plans is None:
            return None
        plan = plans.get(key)
        if plan is None:
            if key in plans:
                return None
            plan = plans[key] = self._p2p_plan("recv", op, src, dtype, shape)
            if plan is None:
                return None
        ep = self._ep
        if ep.aborts._reason is not None:
            ep.aborts.raise_if_stopped()
        lock = plan.lock
        if not lock.acquire(False):
            return None  # another thread of this rank receives from there now
        out = np.empty(plan.shape, plan.dtype)
        try:
            with ep.p2p_lock:
                seq = ep.next_seq(plan.key)
            self._path = "shm-p2p"
            self._channel_ran = plan.channel.recv(  # type: ignore[attr-defined]
                plan.template, seq, out, plan.spin, YIELD_SECONDS) == _DONE
            if not self._channel_ran:
                # Not all there yet, or a header that differs: the link's wait and checks.
                self._recv_rest(out, plan.peer, plan.world, seq)
        finally:
            lock.release()
        return out

    @_tracked
    def _send_rest(self, buf: np.ndarray, w: int, seq: int) -> None:
        self._ep.watch.enter("send", self._gid, seq, w)
        self._run_or_fail("send", lambda: self._send(buf, w, seq))

    @_tracked
    def _recv_rest(self, out: np.ndarray, src: int, w: int, seq: int) -> None:
        self._ep.watch.enter("recv", self._gid, seq, w)
        self._run_or_fail("recv", lambda: self._receive(out, src, w, seq))

    def _p2p_plan(self, way: str, op: str, peer: object, dtype: object,
                  shape: object) -> P2pPlan | None:
        """Return the plan of small sends (way "send") or receives (the call `op`) like these,
        or None where they take the link's path (a rank of another host, a message too big for
        the core). Bad arguments raise as the calls' own checks do."""
        r = int(peer)  # type: ignore[call-overload]
        if not 0 <= r < self._size:
            raise ValueError(f"{op}: {'dst' if way == 'send' else 'src'} must be in "
                             f"[0, {self._size}), got {r}")
        if r == self._rank:
            raise ValueError(f"{op}: {'dst' if way == 'send' else 'src'} {r} is this rank; "
                             "send and recv need another rank")
        dt = np.dtype(dtype)  # type: ignore[call-overload]
        check_dtype(dt, op)
        assert isinstance(shape, (int, tuple))
        dims = (int(shape),) if isinstance(shape, int) else tuple(int(d) for d in shape)
        w = self._world(r)
        link = self._ep.local_links.get(w)
        channel = getattr(link, "core", None)
        nbytes = dt.itemsize * int(np.prod(dims, dtype=np.int64))
        if channel is None or nbytes > P2P_SMALL_BYTES or len(self._p2p or ()) > 256:
            return None
        assert isinstance(link, shm.ShmLink)
        if header.SIZE + nbytes > link.cap // 2:
            return None
        sig = Signature(Op.SEND, 0, self._gid, dt, dims, self._rank)
        direction = "out" if way == "send" else "in"
        return P2pPlan(channel, self._ep.wire_lock(direction, w), (direction, w),
                       header.pack(sig), w, r, dims, dt, link._spin)

    # -- groups ------------------------------------------------------------------------------

    def peers_proved_secret(self) -> bool:
        return self._ep.authenticated

    def split(self, color: int, key: int) -> Backend:
        mine = np.array([color, key], dtype=np.int64)
        table = np.empty(2 * self._size, dtype=np.int64)
        self.all_gather(mine, table, Op.SPLIT)
        pairs = table.reshape(self._size, 2)
        chosen = sorted((int(k), i) for i, (c, k) in enumerate(pairs) if c == color)
        self._splits += 1
        gid = _child_id(self._gid, self._splits, color)
        label = f"{self._label}.split({color})"
        deadline = time.monotonic() + self._ep.timeout
        return RingBackend(self._ep, [self._world(i) for _, i in chosen], gid, label, deadline)

    def close(self) -> None:
        if self._across is not None:
            self._across.close()
        if self._shm is not None:
            self._shm.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._gid == _WORLD_ID:
            self._ep.close()


def create(rank: int, hosts: list[list[str]], key: bytes, timeout: float,
           stall: float = environment.DEFAULT_STALL_SECONDS,
           listeners: list[socket.socket] | None = None,
           host_names: list[str] | None = None, shared_memory: bool = True,
           authenticated: bool = True) -> RingBackend:
    """Return the world group of this process from its rank hostfile entries.

    `authenticated` says whether `key` is a secret (False: derived from public facts);
    `listeners` are this rank's already bound listeners (after a rendezvous);
    `host_names` says which ranks share a host, where the rendezvous learnt it;
    `shared_memory` lets the ranks of a host talk through shared memory.
    """
    addrs = [[parse_address(a) for a in entry] for entry in hosts]
    ep = Endpoint(rank, addrs, key, timeout, stall, listeners)
    ep.host_names = host_names
    ep.shared_memory = shared_memory
    ep.authenticated = authenticated
    ep.tracer = trace.open_tracer(os.environ, rank)
    ep.algorithm = environment.algorithm(os.environ)
    ep.install_excepthook()
    return RingBackend(ep, list(range(len(addrs))), _WORLD_ID, "world", time.monotonic() + timeout)
