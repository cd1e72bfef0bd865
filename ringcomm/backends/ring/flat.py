"""The flat ring's collectives: a group's algorithms over its links, composed.

`RingBackend` decides the layout (one host, hierarchical, the flat ring) and begins each
call; over the flat ring, this object chooses the algorithm by size and ranks (`choose`)
and runs it over the group's links (`RingLinks`): the latency path (the ring, or recursive
doubling), the pair's exchange through the compiled core, the pipelined ring, the relay,
the pairwise exchange. Every header that arrives is checked against the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...errors import RingcommError
from ...signature import Signature
from ...transport import header
from ...transport.endpoint import Endpoint
from ...transport.link import path as link_path
from ...transport.link import spin_budget
from ...transport.watch import Activity
from . import choose
from .algorithms import doubling, pair, pairwise, pipeline, relay, ring
from .algorithms.rows import reduce_rows
from .call import Check, Route
from .links import RingLinks
from .plans import Plans

__all__ = ["FlatRing"]

class FlatRing:
    """The flat ring's collectives of one group: `took(path, sig, native)` records the
    route, `check(sig)(src)` checks rank src's header, `fail(op, exc)` raises the error
    every rank raises."""

    def __init__(self, ep: Endpoint, links: RingLinks, rank: int, size: int, gid: int,
                 label: str, route: Route, spin: float,
                 took: Callable[[str, Signature, bool], None],
                 check: Callable[[Signature], Callable[[int], Check]],
                 fail: Callable[[str, BaseException], None]) -> None:
        self._ep = ep
        self._watch = ep.watch
        self._tracer = ep.tracer
        self.links = links
        self.rank = rank
        self.size = size
        self._gid = gid
        self._label = label
        self._route = route
        self._spin_seconds = spin
        self._took_cb = took
        self._check = check
        self._fail = fail
        self._scratch = np.empty(0, dtype=np.uint8)
        self._pool: ThreadPoolExecutor | None = None
        # Two ranks joined by sockets with the compiled core: the pair's plans, by (op, group,
        # dtype, shape, rank); None where this group has no such exchange.
        self.pair: Plans[pair.PairPlan] | None = None

    def _took(self, path: str, sig: Signature, native: bool = False) -> None:
        self._took_cb(path, sig, native)

    def _spin(self) -> float:
        return spin_budget(self._spin_seconds)

    # -- the latency path: every rank's message to every rank --------------------------------

    def _slots(self, flat: np.ndarray, sig: Signature) -> np.ndarray:
        """Return the (size, header + n) slots of a latency call, this rank's filled in."""
        p, r, hs = self.size, self.rank, header.SIZE
        slot = hs + flat.nbytes
        if self._scratch.nbytes < p * slot:
            self._scratch = np.empty(max(p * slot, 2 * self._scratch.nbytes), dtype=np.uint8)
        slots = self._scratch[:p * slot].reshape(p, slot)
        slots[r, :hs] = np.frombuffer(header.pack(sig), dtype=np.uint8)
        slots[r, hs:] = flat.view(np.uint8)
        return slots

    def gather(self, flat: np.ndarray, sig: Signature) -> np.ndarray:
        """Pass every rank's `flat` once around the ring (`ring.gather`); return the (size, n)
        bytes of them in rank order."""
        slots, r = self._slots(flat, sig), self.rank
        self._took(self.links.path("latency"), sig)
        ring.gather(slots, self.links.right[0], self.links.left[0], r,
                    self._check(sig)((r - 1) % self.size), sig.op.label, self._spin())
        return slots[:, header.SIZE:]

    def headers(self, sig: Signature) -> None:
        """Check call `sig` with every rank of the group: its headers alone around the ring."""
        self.gather(np.empty(0, np.uint8), sig)

    def _reduce_small(self, flat: np.ndarray, out: np.ndarray, ufunc: Callable, sig: Signature,
                      how: choose.Algorithm) -> None:
        """All-reduce a small `flat` into `out`: the pair's exchange, doubling or the ring."""
        if how is choose.Algorithm.PAIR:
            plans = self.pair
            assert plans is not None
            # All the header holds, and the size: the ring across hosts of a hierarchical call
            # reduces a slice of the call's array (the call's shape, fewer bytes).
            key = (sig.op, sig.group, sig.dtype, sig.shape, sig.rank, flat.size)
            plan = plans.get(key) or plans.add(key, pair.plan(sig._replace(seq=0), flat.dtype,
                                                              ufunc, flat.nbytes))
            self._took("tcp-latency", sig, native=True)
            return self.pair_reduce(flat, out, plan, sig.seq, False)
        if how is choose.Algorithm.DOUBLING:
            slots = self._slots(flat, sig)
            links = self.links.pairs(time.monotonic() + self._ep.timeout)
            self._took(link_path(list(links.values()), "doubling"), sig)
            doubling.gather(slots, links, self.rank, self._check(sig), sig.op.label,
                            self._spin())
            raw = slots[:, header.SIZE:]
        else:
            raw = self.gather(flat, sig)
        reduce_rows([raw[i].view(flat.dtype) for i in range(self.size)], out, ufunc)

    def pair_reduce(self, src: np.ndarray, out: np.ndarray, plan: pair.PairPlan, seq: int,
                     lean: bool) -> None:
        """Two ranks over TCP: `pair.allreduce`. `lean`: a call of the fast entry, which the
        watch records only when it has to block."""
        label = plan.sig.op.label

        def blocking(start: bool) -> None:
            if start:
                self._watch.begin(Activity(label, self._gid, seq, -1, time.monotonic(), True))
            else:
                self._watch.leave(self._gid)
        tcp = self.links.tcp_pair()
        assert tcp is not None
        right, left = tcp
        sig = plan.sig._replace(seq=seq)
        if pair.allreduce(src, out, plan, seq, self.rank, right, left,
                          self._check(sig)(1 - self.rank), self._label, self._spin(),
                          blocking if lean else None) and self._tracer is not None:
            self._route.arrived = time.perf_counter()  # the reply was there within the call

    # -- the bandwidth path: the pipelined ring over every lane -------------------------------

    def pipeline(self, src: np.ndarray, data: np.ndarray, blocks: list[tuple[int, int]], n_rs: int,
             n_ag: int, ufunc: Callable | None, sig: Signature) -> None:
        """Run the pipelined ring over all lanes in both directions, from `src` into `data`."""
        self._took(self.links.path("pipeline"), sig)
        links, op = self.links, sig.op.label
        lanes = pipeline.lanes(self.rank, self.size, links.right, links.left, blocks, n_rs,
                               n_ag, self._check(sig))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2 * len(lanes),
                                            thread_name_prefix="ringcomm-lane")

        def first_error(e: BaseException) -> None:
            if isinstance(e, RingcommError):  # tell the peers, and only then close links
                self._ep.aborts.announce(op, e)
            links.shutdown()
        error = pipeline.run(lanes, pipeline.Transfer(data, src, ufunc, sig), self._pool,
                             first_error)
        if error is not None:
            self._fail(op, error)

    # -- the collectives -----------------------------------------------------------------------

    def all_reduce(self, flat: np.ndarray, dst: np.ndarray, ufunc: Callable,
                   sig: Signature) -> None:
        """All-reduce `flat` into `dst`: the latency path, or the pipelined ring."""
        how = choose.reduce(flat.nbytes, flat.size, self.size, self.links.lanes,
                            self.pair is not None, self._ep.algorithm)
        if how is not choose.Algorithm.PIPELINE:
            return self._reduce_small(flat, dst, ufunc, sig, how)
        # Every element of dst is written by a reduce-scatter or an all-gather step.
        self.pipeline(flat, dst, pipeline.even(flat.size, self.size), self.size - 1,
                      self.size - 1, ufunc, sig)

    def all_gather(self, buf: np.ndarray, flat: np.ndarray, sig: Signature) -> None:
        p, n = self.size, buf.size
        if choose.gather(buf.nbytes, p) is choose.Algorithm.LATENCY:
            flat.view(np.uint8).reshape(p, -1)[...] = self.gather(buf.reshape(-1), sig)
            return
        flat[self.rank * n:(self.rank + 1) * n] = buf.reshape(-1)
        self.pipeline(flat, flat, [(i * n, (i + 1) * n) for i in range(p)], 0, p - 1, None, sig)

    def reduce_scatter(self, flat: np.ndarray, dst: np.ndarray, ufunc: Callable,
                       sig: Signature) -> None:
        p, m, r = self.size, dst.size, self.rank
        if choose.gather(flat.nbytes, p) is choose.Algorithm.LATENCY:
            rows = self.gather(flat, sig)
            reduce_rows([rows[i].view(flat.dtype)[r * m:(r + 1) * m] for i in range(p)], dst,
                        ufunc)
            return
        # Reduce-scatter writes only the segments it reduces; the input stays as it was.
        work = np.empty_like(flat)
        self.pipeline(flat, work, [(i * m, (i + 1) * m) for i in range(p)], p - 1, 0, ufunc, sig)
        dst[...] = work[r * m:(r + 1) * m]

    def broadcast(self, raw: np.ndarray, root: int, sig: Signature) -> None:
        p, r, op = self.size, self.rank, sig.op.label
        if choose.gather(raw.nbytes, p) is choose.Algorithm.LATENCY:
            # Every rank's slot, header included, passes every other rank: each rank checks
            # every call itself, so ranks that disagree (on the root too) all raise at once.
            rows = self.gather(raw, sig)
            if r != root:
                raw[...] = rows[root]
            return
        self.gather(raw[:0], sig)  # every rank checks every call first
        self._took(self.links.path("relay"), sig)
        relay.broadcast(raw, root, r, p, self.links.right[0], self.links.left[0],
                        header.pack(sig), self._check(sig)((r - 1) % p), op)

    def all_to_all(self, buf: np.ndarray, out: np.ndarray, sig: Signature) -> None:
        p = self.size
        links = self.links.pairs(time.monotonic() + self._ep.timeout)
        self._took(link_path(list(links.values()), "pairs"), sig)
        pairwise.all_to_all(buf.reshape(p, -1).view(np.uint8), out.reshape(p, -1).view(np.uint8),
                            links, self.rank, header.pack(sig), self._check(sig), sig.op.label)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
