"""The ring backend's group: links, call bookkeeping and the choice of algorithm, composed.

Each group is a ring of its members; rank r holds one connection per lane to its right
neighbour (which it opened) and one from its left neighbour (which that neighbour
opened). Ranks on one host share memory (`sharing`): a group on one host runs its
collectives through the host's segment (`algorithms.host`), groups across hosts with
as many ranks on each are hierarchical (`algorithms.hierarchical`), and the ring's
neighbours on one host are joined by shared-memory links. send/recv go between any two
ranks (`p2p`).

Every collective reads: begin the call (`_sig`), choose the algorithm, run it over
links with a header check per sending rank, record the route (`call.Route`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import NoReturn

import numpy as np

from ... import environment, native, trace
from ...arrays import check_dtype
from ...errors import RingcommError
from ...signature import REDUCTIONS, SCATTER_OPS, Op, ReduceOp, Signature
from ...transport import shm
from ...transport.endpoint import Endpoint
from ...transport.net import parse_address
from ...transport.watch import Activity, GroupInfo
from ..base import Backend
from . import choose, sharing
from .algorithms import hierarchical, pair
from .algorithms.host import Local, Plan
from .call import Check, Route, header_check, tracked
from .choose import Layout
from .flat import FlatRing
from .links import RingLinks
from .p2p import PointToPoint
from .plans import Plans

__all__ = ["RingBackend", "create"]

log = logging.getLogger("ringcomm")

# The latency path polls this long for a reply before it blocks: at p=2 on 2 cores, 4-byte
# all_sum took 34 us without and 23 us with 10-30 us of polling (one run). It is off when the
# group has more ranks than this machine has cores, where polling would take a core from the
# rank that has to answer.
SPIN_SECONDS = 20e-6
_WORLD_ID = 1
_MISSING = Plans.MISSING


def _child_id(parent: int, nth: int, color: object) -> int:
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
    concurrent_p2p = True  # its own links, numbered and locked per direction (`p2p`)

    def __init__(self, ep: Endpoint, members: list[int], gid: int, label: str,
                 deadline: float) -> None:
        self._ep = ep
        self._members = members
        self._rank = members.index(ep.rank)
        self._size = len(members)
        self.gid = gid
        self.label = label
        self.watch = ep.watch
        self.tracer = ep.tracer
        self.route = Route()
        self._seq = 0
        self._splits = 0
        self._made: dict[tuple[tuple[int, ...], str], int] = {}  # subgroup() by kind
        self._links = RingLinks(ep, members, gid, label, self._peer)
        self._flat = FlatRing(ep, self._links, self._rank, self._size, gid, label, self.route,
                              SPIN_SECONDS if self._size <= _cores() else 0.0, self._took,
                              self._check, self._fail)
        ep.watch.groups[gid] = GroupInfo(label, tuple(members))
        self._debug = log.isEnabledFor(logging.DEBUG)
        lean = self.tracer is None and not self._debug  # the fast paths: untraced calls
        self._local: Local | None = None  # the host's ranks of this group, through shared memory
        self._shm: shm.Shared | None = None  # this group's segment on this host, if any
        self._across: RingBackend | None = None  # this rank's ring across hosts (hierarchical)
        # Small reductions of a group on one host or of two ranks over TCP, untraced: plans by
        # (op, dtype, shape), or None (this group has no fast path).
        self._fast: Plans[Plan | pair.PairPlan | None] | None = None
        self._p2p = PointToPoint(ep, members, gid, label, self.route, self._peer, self._fail,
                                 native.CORE is not None and lean)
        if self._size > 1:
            try:
                self._links.connect(deadline)
            except RingcommError as e:
                self._fail("set-up", e)
            if ep.shared_memory and shm.available():
                self._run_or_fail("set-up", lambda: self._share(deadline))
        # Two ranks joined by sockets (two hosts, or the ring across two hosts): small
        # all-reduces take the core's exchange, by (op, group, dtype, shape, rank).
        if self._size == 2 and native.CORE is not None and self._local is None \
                and self._links.tcp_pair() is not None:
            self._flat.pair = Plans()
            if lean:
                self._fast = Plans()
        self._layout = choose.layout(self._size, self._local is not None,
                                     self._across is not None)

    # -- what callers see ----------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def path(self) -> str:
        """Return the transport and algorithm the last call took (shm-slot, tcp-pipeline, ...)."""
        return self.route.path

    @property
    def core(self) -> str:
        """Return which core ran the last call: "native" (the compiled core ran its hot loop:
        a small reduction through shared memory or between two ranks over TCP, or a small send
        or recv moved whole through a link's channel) or "python"."""
        return self.route.core

    def peers_proved_secret(self) -> bool:
        return self._ep.authenticated

    def object_key(self) -> bytes | None:
        return hmac.new(self._ep.key, b"ringcomm-objects", hashlib.sha256).digest()

    # -- the call's bookkeeping ----------------------------------------------------------------

    def _world(self, r: int) -> int:
        return self._members[r]

    def _peer(self, r: int) -> str:
        name = self._ep.peer(self._world(r))
        return name if self.gid == _WORLD_ID else f"group rank {r}, world {name}"

    def _sig(self, op: Op, a: np.ndarray, arg: int = 0) -> Signature:
        """Begin a call: number it, record it in the watch, and return its signature."""
        self._ep.raise_if_aborted()
        self._seq += 1
        self.watch.begin(Activity(op.label, self.gid, self._seq, -1, time.monotonic(), True))
        self.route.begin()
        return Signature(op, self._seq, self.gid, a.dtype, tuple(a.shape), self._rank, arg)

    def _check(self, sig: Signature) -> Callable[[int], Check]:
        """Return the header check of call `sig` for each sending group rank."""
        route = self.route if self.tracer is not None else None
        return lambda src: header_check(sig, src, self._size, self.label, self._peer(src), route)

    def _fail(self, op: str, exc: BaseException) -> NoReturn:
        """Turn a failure into the error every rank raises, and tell the other ranks."""
        self._ep.aborts.fail(op, exc, self._ep.watch.blame)

    def _run_or_fail(self, op: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except RingcommError as e:
            self._fail(op, e)

    def _took(self, path: str, sig: Signature, native: bool = False) -> None:
        """Note the path the current call takes (for the trace), and log it at DEBUG."""
        self.route.took(path, native)
        if self._debug:
            log.debug("%s [call #%d] of the %s group: %s path", sig.op.label, sig.seq,
                      self.label, path)

    # -- shared memory -------------------------------------------------------------------------

    def _setup_round(self, mine: np.ndarray) -> np.ndarray:
        """Gather one int64 row from every rank of the group (over the TCP ring)."""
        sig = Signature(Op.SETUP, 0, self.gid, mine.dtype, tuple(mine.shape), self._rank)
        rows = self._flat.gather(mine, sig)
        return rows.copy().view(np.int64).reshape(self._size, -1)

    def _share(self, deadline: float) -> None:
        """Share memory with this group's ranks on this host (`sharing`), and compose: the
        ring's links on this host, send/recv's links, one host's collectives, the ring
        across hosts."""
        names = self._ep.host_names
        hosts = [names[w] if names is not None else self._ep.addrs[w][0].host
                 for w in self._members]
        s = sharing.share(self._ep, self._members, self._rank, self.gid, self.gid == _WORLD_ID,
                          self.label, hosts, self._peer, _cores(), self._setup_round)
        if s is None:
            return
        p, r = self._size, self._rank
        if s.neighbours:
            # A shared-memory link is one lane, so every rank (they all see the same table)
            # runs one lane per neighbour.
            self._links.one_lane()
        shared = s.shared
        if shared is None:
            return  # the only rank of its host in an uneven layout: its links are TCP
        self._ep.aborts.hooks.append(shared.abandon)
        self._shm, index = shared, s.local.index(r)
        if self.gid == _WORLD_ID:
            self._ep.mail.local = {self._world(q): s.links[j, 0]
                                    for j, q in enumerate(s.local) if j != index}
        if s.neighbours:  # the ring's set: its neighbours here, and direct links on this host
            self._links.local = {q: s.links[j, s.p2p] for j, q in enumerate(s.local) if j != index}
            for side, q in (("right", (r + 1) % p), ("left", (r - 1) % p)):
                if q in s.local:
                    self._links.replace(side, self._links.local[q])
        if not s.even:
            return
        self._local = Local(shared, self.label, self.watch, self.gid, s.native)
        if len(s.hosts) == 1 and self.tracer is None and not self._debug:
            self._fast = Plans()
        if len(s.hosts) > 1:
            across = [members[index] for members in s.hosts.values()]
            self._across = RingBackend(self._ep, [self._world(q) for q in across],
                                       _child_id(self.gid, -1, index),
                                       f"{self.label}.across({index})", deadline)

    def _shared(self, sig: Signature, fn: Callable[[Local], str]) -> None:
        """Run `fn` on this host's shared memory (when every rank is on this host)."""
        local = self._local
        assert local is not None
        self._run_or_fail(sig.op.label, lambda: self._took(fn(local), sig))

    def _agree(self, sig: Signature) -> None:
        """Hierarchical groups: check the call on this host and across hosts, before data moves."""
        local, across = self._local, self._across
        assert local is not None and across is not None
        self._run_or_fail(sig.op.label, lambda: hierarchical.agree(local, across, sig))

    def _check_call(self, sig: Signature, buf: np.ndarray) -> None:
        """Check that every rank made the same call, where no data needs to move.

        A zero-byte gather around the ring carries only the headers.
        """
        if self._size == 1:
            return
        if self._local is not None:
            if self._across is None:
                return self._shared(sig, lambda local: local.check(sig))
            return self._agree(sig)
        self._run_or_fail(sig.op.label, lambda: self._flat.headers(sig))

    # -- collectives ---------------------------------------------------------------------------

    @tracked
    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        sig = self._sig(REDUCTIONS[op], src)
        if self._size == 1 or src.size == 0:
            if out is not src:
                np.copyto(out, src)
            self._check_call(sig, src)
            # A reduction through the host's slots counts as the core's, as every one does.
            local = self._local
            if self.route.path == "shm-slot" and local is not None and local.core is not None:
                self.route.native = True
            return
        flat, dst, ufunc = src.reshape(-1), out.reshape(-1), op.ufunc
        local = self._local
        if local is not None:
            if self._across is None:
                try:  # the latency-critical path: no closures
                    path = local.all_reduce(flat, dst, ufunc, sig)
                except RingcommError as e:
                    self._fail(sig.op.label, e)
                self.route.took(path, path == "shm-slot" and local.core is not None)
                if self._debug:
                    self._took(path, sig, self.route.native)
                return
            across = self._across
            return self._run_or_fail(sig.op.label, lambda: hierarchical.all_reduce(
                flat, dst, ufunc, sig, local, across, self._ep.algorithm,
                lambda path: self._took(path, sig)))
        self._run_or_fail(sig.op.label, lambda: self._flat.all_reduce(flat, dst, ufunc, sig))

    def reduce_flat(self, flat: np.ndarray, dst: np.ndarray, ufunc: Callable,
                    sig: Signature) -> None:
        """All-reduce `flat` into `dst` as part of call `sig` of a group this one serves (the
        ring across hosts of a hierarchical group): checked under that call, not one of its own."""
        self._flat.all_reduce(flat, dst, ufunc, sig._replace(rank=self._rank))

    def gather_headers(self, sig: Signature) -> None:
        """Check call `sig` of a group this one serves with every rank of this one."""
        self._flat.headers(sig._replace(rank=self._rank))

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
        plan = plans.get(key, _MISSING)
        if plan is _MISSING:
            plan = plans.add(key, self._plan(x, op))
        if plan is None or not x.flags.c_contiguous:
            return None
        aborts = self._ep.aborts
        if aborts.reason is not None:
            aborts.raise_if_stopped()
        seq = self._seq = self._seq + 1
        out = np.empty(plan.sig.shape, plan.sig.dtype)
        local, route = self._local, self.route
        try:
            if local is not None:
                local.reduce_small(x, out, plan, seq)
                route.path, route.native = "shm-slot", local.core is not None
            else:
                route.path, route.native = "tcp-latency", True
                self._flat.pair_reduce(x, out, plan, seq, True)
        except RingcommError as e:
            self._fail(plan.sig.op.label, e)
        self.watch.done[self.gid] = seq
        return out

    def _plan(self, x: np.ndarray, op: ReduceOp) -> Plan | pair.PairPlan | None:
        """Return the plan of fast reductions like `x`, or None where they take another path."""
        kind = REDUCTIONS[op]
        check_dtype(x.dtype, kind.label, op)
        local = self._local
        most = local.small if local is not None else choose.PAIR_SMALL_BYTES
        if x.size == 0 or x.nbytes > most:
            return None
        sig = Signature(kind, 0, self.gid, x.dtype, tuple(x.shape), self._rank)
        if local is not None:
            return local.plan(sig, op.ufunc)
        return pair.plan(sig, x.dtype, op.ufunc)

    @tracked
    def all_gather(self, buf: np.ndarray, out: np.ndarray, op: Op = Op.ALL_GATHER,
                   arg: int = 0) -> None:
        sig = self._sig(op, buf, arg)
        p, n = self._size, buf.size
        if p == 1 or n == 0:
            out.reshape(-1)[:n] = buf.reshape(-1)
            return self._check_call(sig, buf)
        flat = out.reshape(-1)
        if self._layout is Layout.HOST:
            return self._shared(sig, lambda local: local.all_gather(buf.reshape(-1), flat, sig))
        if self._layout is Layout.HIERARCHICAL:
            self._agree(sig)
        self._run_or_fail(sig.op.label, lambda: self._flat.all_gather(buf, flat, sig))

    @tracked
    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        sig = self._sig(Op.SUM_SCATTER, buf, SCATTER_OPS[op])
        p, m = self._size, out.size
        flat, dst = buf.reshape(-1), out.reshape(-1)
        if p == 1 or m == 0:
            dst[...] = flat[:m]
            return self._check_call(sig, buf)
        ufunc = op.ufunc
        if self._layout is Layout.HOST:
            return self._shared(sig, lambda local: local.reduce_scatter(flat, dst, ufunc, sig))
        if self._layout is Layout.HIERARCHICAL:
            self._agree(sig)
        self._run_or_fail(sig.op.label, lambda: self._flat.reduce_scatter(flat, dst, ufunc, sig))

    @tracked
    def broadcast(self, buf: np.ndarray, root: int, kind: Op = Op.BROADCAST) -> None:
        sig = self._sig(kind, buf, root)
        p = self._size
        if p == 1:
            return
        raw = buf.reshape(-1).view(np.uint8)
        op = sig.op.label
        if self._layout is Layout.HOST:
            return self._shared(sig, lambda local: local.broadcast(raw, root, sig))
        if self._layout is Layout.HIERARCHICAL:
            self._agree(sig)
        self._run_or_fail(op, lambda: self._flat.broadcast(raw, root, sig))

    @tracked
    def barrier(self) -> None:
        token = np.zeros(1, dtype=np.uint8)
        sig = self._sig(Op.BARRIER, token)
        if self._size == 1:
            return
        if self._local is None:
            return self._run_or_fail("barrier", lambda: self._flat.gather(token, sig))
        self._check_call(sig, token)
        if self._across is not None:  # no rank leaves before every host has arrived
            self._shared(sig, lambda local: local.check(sig))

    def all_to_all(self, buf: np.ndarray, out: np.ndarray) -> None:
        if self._size == 1:
            return super().all_to_all(buf, out)
        self._all_to_all(buf, out)

    @tracked
    def _all_to_all(self, buf: np.ndarray, out: np.ndarray) -> None:
        """Through shared memory on one host; elsewhere p - 1 direct exchanges (`pairwise`)."""
        sig = self._sig(Op.ALL_TO_ALL, buf)
        if buf.size == 0:
            return self._check_call(sig, buf)
        if self._layout is Layout.HOST:
            return self._shared(sig, lambda local: local.all_to_all(buf.reshape(-1),
                                                                    out.reshape(-1), sig))
        self._run_or_fail(sig.op.label, lambda: self._flat.all_to_all(buf, out, sig))

    # gather and scatter are an all_gather or a broadcast that checks the call under its name.

    def _all_gather_as(self, buf: np.ndarray, out: np.ndarray, op: Op, root: int) -> None:
        self.all_gather(buf, out, op, root)

    def _broadcast_as(self, buf: np.ndarray, root: int, op: Op) -> None:
        self.broadcast(buf, root, op)

    # -- point to point (`p2p`) ----------------------------------------------------------------

    def send(self, buf: np.ndarray, dst: int) -> None:
        self._p2p.send(buf, dst)

    def recv(self, out: np.ndarray, src: int) -> None:
        self._p2p.recv(out, src)

    def send_small(self, x: np.ndarray, dst: int) -> bool:
        return self._p2p.send_small(x, dst)

    def recv_small(self, key: tuple, shape: object, dtype: object, src: int,
                   op: str = "recv") -> np.ndarray | None:
        return self._p2p.recv_small(key, shape, dtype, src, op)

    # -- groups ------------------------------------------------------------------------------

    def split(self, color: int, key: int) -> Backend:
        mine = np.array([color, key], dtype=np.int64)
        table = np.empty(2 * self._size, dtype=np.int64)
        self.all_gather(mine, table, Op.SPLIT)
        pairs = table.reshape(self._size, 2)
        chosen = sorted((int(k), i) for i, (c, k) in enumerate(pairs) if c == color)
        self._splits += 1
        gid = _child_id(self.gid, self._splits, color)
        label = f"{self.label}.split({color})"
        deadline = time.monotonic() + self._ep.timeout
        return RingBackend(self._ep, [self._world(i) for _, i in chosen], gid, label, deadline)

    def subgroup(self, ranks: list[int], tag: str) -> Backend:
        kind = (tuple(ranks), tag)  # counted, so that a group made again has an id of its own
        nth = self._made[kind] = self._made.get(kind, 0) + 1
        return RingBackend(self._ep, [self._world(i) for i in ranks], _child_id(
            self.gid, -1 - nth, repr(kind)), f"{self.label}.group({tag or ','.join(map(str, ranks))})",
            time.monotonic() + self._ep.timeout)

    def close(self) -> None:
        if self._across is not None:
            self._across.close()
        if self._shm is not None:
            self._shm.close()
        self._flat.close()
        if self.gid == _WORLD_ID:
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
