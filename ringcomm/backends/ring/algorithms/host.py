"""Collectives among the ranks of one host, through their shared segment (`transport.shm`).

The segment is used as memory, not as a pipe: every rank reads the others'
regions directly.

- Small messages (header and data fit one slot): each rank writes its call's
  header and data into its slot and posts; after one wait every rank has every
  rank's data and reduces it in rank order itself (the same bits everywhere).
- Large messages go in chunks through the staging halves. An all-reduce
  stages its chunk, then each rank reduces its slice of the chunk from every
  rank's half (a reduce-scatter), writes the result back into its own half,
  and after a second wait copies every slice out (an all-gather). Halves
  alternate by chunk, slots by post, and every step waits for all ranks, so a
  rank overwrites memory only after every rank has read it.

Every post carries the call's header, and every rank compares all headers at
the first wait of a call, before it reads any data as an array: ranks that
disagree all raise MismatchError.

A small reduction is the latency-critical call. Its per-kind `Plan` (header
template, reduction, row views) is made once per (op, dtype, shape); the
compiled core (`ringcomm.native`), where it is built, then does the whole call
in one C call: header and data into the slot, post, the short wait, the
checks (a rank that left, every header) and the reduction in rank order.
When the short wait runs out, Python records the call in the watch and
blocks with the deadline and liveness checks of `Shared.wait`; when a check
fails, Python builds the error. Without the core, the same steps run in
Python with the same plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .... import native
from ....errors import PeerAbortedError, PeerError
from ....signature import Signature
from ....transport import header
from ....transport.shm import HEADER, LINE, SLOT_BYTES, Shared
from ....transport.watch import Activity, Watch
from ..call import mismatch
from ..plans import Plans
from .pair import OPCODES
from .rows import even, reduce_rows

__all__ = ["Local", "Plan"]




class Plan(NamedTuple):
    """What a small reduction of one kind (op, dtype, shape) needs on every call, made once."""

    template: bytes  # the header with call number 0
    kind: int  # the core's element kind, or -1: Python reduces
    opcode: int  # the core's op (sum, max, min), or -1
    ufunc: np.ufunc
    sig: Signature  # the call with number 0 (for error messages)
    rows: tuple[np.ndarray, np.ndarray]  # per slot: every rank's data, (size, n)


class Local:
    """The shared-memory collectives of a group whose ranks share this host.

    `watch` and `gid` let a small reduction record itself only when it has to block.
    """

    def __init__(self, shared: Shared, label: str, watch: Watch | None = None,
                 gid: int = 0, native_everywhere: bool | None = None) -> None:
        self.sh = shared
        self.core = shared.core
        self.watch = watch
        self.gid = gid
        self.label = label
        self.rank = shared.index
        self.size = shared.count
        # Messages that fit a slot take it (one post; every rank reduces every rank's data),
        # except that Python's reduction of many rows costs more than the chunked path's
        # second step: there the slot's share shrinks with the ranks.
        # `native_everywhere` (every rank of the group runs the core) decides, not this rank's
        # own core: ranks that chose differently would read one message two ways.
        everywhere = shared.core is not None if native_everywhere is None else native_everywhere
        share = 1 if everywhere else max(1, shared.count // 2)
        self.small = (SLOT_BYTES - HEADER) // share
        self._mem = shared.mem
        self._slot_at = [[j * shared.region + LINE + s * SLOT_BYTES for s in range(2)]
                         for j in range(self.size)]
        self._hdr = b""
        self._templates: Plans[bytes] = Plans()
        self._views: Plans[np.ndarray] = Plans()
        self._chunks = 0  # staging halves alternate by chunk, across calls
        self._plans: Plans[Plan] = Plans()
        self._others = [j for j in range(self.size) if j != self.rank]

    def _half(self) -> int:
        """Return the staging half of the next chunk."""
        self._chunks += 1
        return self._chunks & 1

    # -- the steps -------------------------------------------------------------------------

    def begin(self, sig: Signature) -> None:
        """Start a call: make its header, which every post of the call carries.

        The header is the TCP header with the rank field zeroed, so that ranks making
        the same call write the same bytes; it is made from a per-call-kind template.
        """
        key = (sig.op, sig.group, sig.dtype, sig.shape, sig.arg)
        tmpl = self._templates.get(key) or self._templates.add(
            key, header.pack(sig._replace(seq=0, rank=0)))
        self._hdr = header.stamp(tmpl, sig.seq)

    def _step(self, sig: Signature, check: bool) -> int:
        """Post, wait for every local rank; compare headers when `check`. Return the slot index."""
        s = (self.sh.posts + 1) & 1
        at = self._slot_at[self.rank][s]
        self._mem[at:at + HEADER] = self._hdr
        self.sh.post()
        self.sh.wait(sig.op.label)
        if check:
            self._compare(sig, s)
        return s

    def _compare(self, sig: Signature, s: int) -> None:
        mine, mem = self._hdr, self._mem
        for j in range(self.size):
            at = self._slot_at[j][s]
            if j == self.rank or mem[at:at + HEADER] == mine:
                continue
            self._differ(sig, j, s)

    def _differ(self, sig: Signature, j: int, s: int) -> None:
        """Raise the error of local rank j's header in slot s, which differs from `sig`'s."""
        at = self._slot_at[j][s]
        other = header.unpack(self._mem[at:at + HEADER])
        if other is None:
            raise PeerError(f"{sig.op.label}: {self.sh.names(j)} wrote a header that is not a "
                            "ringcomm call (a different ringcomm version?)")
        what = sig.differs(other._replace(rank=sig.rank)) or "the calls differ"
        raise mismatch(sig.op.label, self.label, self.rank, sig, j, other, what)

    def _rows(self, s: int, dtype: np.dtype, count: int) -> np.ndarray:
        """Return the (size, count) view of every rank's slot `s` as `dtype` (cached)."""
        key = (s, dtype, count)
        view = self._views.get(key)
        if view is None:
            view = self._views.add(key, np.ndarray(
                (self.size, count), dtype, buffer=self._mem, offset=self._slot_at[0][s] + HEADER,
                strides=(self.sh.region, dtype.itemsize)))
        return view

    def _row(self, j: int, s: int, dtype: np.dtype, count: int) -> np.ndarray:
        return np.frombuffer(self._mem, dtype, count, self._slot_at[j][s] + HEADER)

    def _chunk(self, dtype: np.dtype) -> int:
        return self.sh.chunk // dtype.itemsize

    # -- collectives ---------------------------------------------------------------------------

    def check(self, sig: Signature) -> str:
        """Check every rank's call where no data moves (a barrier, an empty array); return the path."""
        self.begin(sig)
        self._step(sig, True)
        return "shm-slot"

    def _gather_small(self, flat: np.ndarray, sig: Signature) -> int:
        """Write `flat` into this rank's next slot, then take a checked step; return the slot."""
        self.begin(sig)
        if flat.nbytes:
            at = self._slot_at[self.rank][(self.sh.posts + 1) & 1] + HEADER
            self._mem[at:at + flat.nbytes] = flat  # type: ignore[call-overload]
        return self._step(sig, True)

    def all_reduce(self, flat: np.ndarray, out: np.ndarray, ufunc: np.ufunc,
                   sig: Signature) -> str:
        """Reduce `flat` over the host's ranks into `out` (may be `flat`); return the path taken."""
        p, n, dt = self.size, flat.size, flat.dtype
        if flat.nbytes <= self.small:
            plan = self.plan(sig._replace(seq=0), ufunc)
            self.reduce_small(flat, out, plan, sig.seq)
            return "shm-slot"
        self.begin(sig)
        i, halves, C = self.rank, self.sh.halves, self._chunk(dt)
        for k, o in enumerate(range(0, n, C)):
            c, h = min(C, n - o), self._half()
            mine = halves[i][h][:c * dt.itemsize].view(dt)
            mine[...] = flat[o:o + c]
            self._step(sig, k == 0)
            bounds = even(c, p)
            a, b = bounds[i]
            dst = out[o + a:o + b]
            parts = [halves[j][h][a * dt.itemsize:b * dt.itemsize].view(dt) for j in range(p)]
            reduce_rows(parts, dst, ufunc)
            mine[a:b] = dst
            self._step(sig, False)
            for j in range(p):
                if j != i:
                    aj, bj = bounds[j]
                    out[o + aj:o + bj] = halves[j][h][aj * dt.itemsize:bj * dt.itemsize].view(dt)
        return "shm-chunked"

    # -- the small reduction: the latency-critical call ---------------------------------------

    def plan(self, sig: Signature, ufunc: Any) -> Plan:
        """Return the plan of small reductions like `sig` (its call number 0), made once."""
        key = (sig.op, sig.dtype, sig.shape)
        plan = self._plans.get(key)
        if plan is None:
            n, dt = int(np.prod(sig.shape, dtype=np.int64)), sig.dtype
            opcode = OPCODES.get(ufunc, -1)
            kind = native.kind(dt) if opcode >= 0 else -1
            rows = (self._rows(0, dt, n), self._rows(1, dt, n))
            plan = self._plans.add(key, Plan(header.pack(sig._replace(rank=0)), kind, opcode,
                                              ufunc, sig, rows))
        return plan

    def reduce_small(self, src: np.ndarray, out: np.ndarray, plan: Plan, seq: int) -> None:
        """Reduce `src` (contiguous, at most `small` bytes) over the host's ranks into `out`.

        Call number `seq`; rank order on every rank, so the same bits everywhere.
        """
        sh, core = self.sh, self.core
        if core is None:
            return self._reduce_small_py(src, out, plan, seq)
        posts = sh.posts
        spin, yield_ = sh.short_wait
        code = core.allreduce(src, out, plan.template, seq, posts, plan.kind, plan.opcode, spin,
                              yield_)
        sh.posts = posts + 1
        if code:
            self._after(code, out, plan, seq, time.perf_counter() - yield_)

    def _after(self, code: int, out: np.ndarray, plan: Plan, seq: int, start: float) -> None:
        """Finish a core call that did not: block for the others, raise a failed check's error,
        or reduce a dtype the core does not."""
        sh, core, s = self.sh, self.core, self.sh.posts & 1
        assert core is not None
        label = plan.sig.op.label
        if code == native.Codes.PENDING:
            watch = self.watch
            if watch is not None:
                watch.begin(Activity(label, self.gid, seq, -1, time.monotonic(), True))
            try:
                sh.wait_rest(label, start)
                code = core.finish(out, sh.posts, plan.kind, plan.opcode)
            finally:
                if watch is not None:
                    watch.leave(self.gid)
        if code == native.Codes.GONE:
            sh.abandoned(label)
            raise PeerAbortedError(f"{label}: a rank of this host left the job")
        if code == native.Codes.MISMATCH:
            sig = plan.sig._replace(seq=seq)
            self._hdr = header.stamp(plan.template, seq)
            self._compare(sig, s)
            raise PeerError(f"{label}: the headers of the {self.label} group differ, yet match "
                            "when read again (memory corrupted?)")
        if code == native.Codes.REDUCE:
            self._reduce_rows(plan, s, out)

    def _reduce_rows(self, plan: Plan, s: int, out: np.ndarray) -> None:
        rows = plan.rows[s]
        if self.size == 2:
            plan.ufunc(rows[0], rows[1], out=out.reshape(-1))
        else:  # one reduction over a strided view of every slot (row after row)
            plan.ufunc.reduce(rows, axis=0, out=out.reshape(-1))

    def _reduce_small_py(self, src: np.ndarray, out: np.ndarray, plan: Plan, seq: int) -> None:
        """The pure-Python small reduction: the core's steps with the same plan."""
        sh, mem = self.sh, self._mem
        s = (sh.posts + 1) & 1
        at = self._slot_at[self.rank][s]
        hdr = self._hdr = header.stamp(plan.template, seq)
        mem[at:at + HEADER] = hdr
        if src.nbytes:
            mem[at + HEADER:at + HEADER + src.nbytes] = src.reshape(-1)  # type: ignore[call-overload]
        sh.post()
        label, watch = plan.sig.op.label, self.watch
        if watch is None:
            sh.wait(label)
        else:  # recorded as busy, as every waiting call is (stall lines, deadlock checks)
            watch.begin(Activity(label, self.gid, seq, -1, time.monotonic(), True))
            try:
                sh.wait(label)
            finally:
                watch.leave(self.gid)
        for j in self._others:
            a = self._slot_at[j][s]
            if mem[a:a + HEADER] != hdr:
                self._differ(plan.sig._replace(seq=seq), j, s)
        self._reduce_rows(plan, s, out)

    def all_gather(self, flat: np.ndarray, out: np.ndarray, sig: Signature) -> str:
        """Fill `out` (size*n) with every rank's `flat` (n) in rank order; return the path."""
        n = flat.size
        return self.gather_slices(flat, out, [(j * n, (j + 1) * n) for j in range(self.size)],
                                  sig)

    def reduce_scatter(self, flat: np.ndarray, out: np.ndarray, ufunc: Callable,
                       sig: Signature) -> str:
        """Reduce `flat` (size*m) over ranks; write this rank's m elements to `out`."""
        m = out.size
        return self.reduce_slices(flat, out, [(j * m, (j + 1) * m) for j in range(self.size)],
                                  ufunc, sig)

    def reduce_slices(self, flat: np.ndarray, out: np.ndarray, bounds: list[tuple[int, int]],
                      ufunc: Callable, sig: Signature) -> str:
        """Reduce `flat` over ranks; write the reduction of flat[bounds[rank]] into `out`.

        `out` may be that very slice of `flat`. Return the path taken.
        """
        p, dt, i = self.size, flat.dtype, self.rank
        a, b = bounds[i]
        if flat.nbytes <= self.small:
            s = self._gather_small(flat, sig)
            parts = [self._row(j, s, dt, flat.size)[a:b] for j in range(p)]
            ufunc(parts[0], parts[1], out=out)
            for part in parts[2:]:
                ufunc(out, part, out=out)
            return "shm-slot"
        self.begin(sig)
        halves, C = self.sh.halves, max(1, self._chunk(dt) // p)
        size = C * dt.itemsize
        longest = max(hi - lo for lo, hi in bounds)
        for k, o in enumerate(range(0, longest, C)):
            h = self._half()
            staged = halves[i][h][:p * size].view(dt)
            for j, (lo, hi) in enumerate(bounds):
                c = max(0, min(C, hi - lo - o))
                staged[j * C:j * C + c] = flat[lo + o:lo + o + c]
            self._step(sig, k == 0)
            c = max(0, min(C, b - a - o))
            if c == 0:
                continue
            parts = [halves[j][h][i * size:i * size + c * dt.itemsize].view(dt) for j in range(p)]
            dst = out[o:o + c]
            reduce_rows(parts, dst, ufunc)
        return "shm-chunked"

    def gather_slices(self, src: np.ndarray, out: np.ndarray, bounds: list[tuple[int, int]],
                      sig: Signature) -> str:
        """Fill out[bounds[j]] with rank j's `src`, for every j; `src` may be this rank's slice.

        Return the path taken.
        """
        dt, i = src.dtype, self.rank
        longest = max(hi - lo for lo, hi in bounds)
        if longest * dt.itemsize <= self.small:
            s = self._gather_small(src, sig)
            for j, (lo, hi) in enumerate(bounds):
                if j != i:
                    out[lo:hi] = self._row(j, s, dt, hi - lo)
            if not np.shares_memory(src, out[bounds[i][0]:bounds[i][1]]):
                out[bounds[i][0]:bounds[i][1]] = src
            return "shm-slot"
        self.begin(sig)
        halves, C = self.sh.halves, self._chunk(dt)
        for k, o in enumerate(range(0, longest, C)):
            h = self._half()
            c = max(0, min(C, src.size - o))
            halves[i][h][:c * dt.itemsize].view(dt)[...] = src[o:o + c]
            self._step(sig, k == 0)
            for j, (lo, hi) in enumerate(bounds):
                c = max(0, min(C, hi - lo - o))
                if c:
                    out[lo + o:lo + o + c] = halves[j][h][:c * dt.itemsize].view(dt)
        return "shm-chunked"

    def all_to_all(self, flat: np.ndarray, out: np.ndarray, sig: Signature) -> str:
        """Send block j of `flat` (size blocks) to rank j; block i of `out` comes from rank i."""
        p, dt, i = self.size, flat.dtype, self.rank
        m = flat.size // p
        if flat.nbytes <= self.small:
            s = self._gather_small(flat, sig)
            for j in range(p):
                out[j * m:(j + 1) * m] = self._row(j, s, dt, p * m)[i * m:(i + 1) * m]
            return "shm-slot"
        self.begin(sig)
        halves, C = self.sh.halves, max(1, self._chunk(dt) // p)
        blocks = flat.reshape(p, m)
        for k, o in enumerate(range(0, m, C)):
            c, h = min(C, m - o), self._half()
            size = c * dt.itemsize
            halves[i][h][:p * size].view(dt).reshape(p, c)[...] = blocks[:, o:o + c]
            self._step(sig, k == 0)
            for j in range(p):
                out[j * m + o:j * m + o + c] = halves[j][h][i * size:(i + 1) * size].view(dt)
        return "shm-chunked"

    def broadcast(self, raw: np.ndarray, root: int, sig: Signature) -> str:
        """Overwrite `raw` (bytes) on every rank with root's; return the path."""
        n = raw.size
        if n <= self.small:
            s = self._gather_small(raw if self.rank == root else raw[:0], sig)
            if self.rank != root:
                raw[...] = self._row(root, s, raw.dtype, n)
            return "shm-slot"
        self.begin(sig)
        halves, C = self.sh.halves, self.sh.chunk
        for k, o in enumerate(range(0, n, C)):
            c, h = min(C, n - o), self._half()
            if self.rank == root:
                halves[root][h][:c] = raw[o:o + c]
            self._step(sig, k == 0)
            if self.rank != root:
                raw[o:o + c] = halves[root][h][:c]
        return "shm-chunked"
