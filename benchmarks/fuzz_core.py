"""Fuzz the compiled core (ringcomm._native) with random inputs, many cases per process.

    python benchmarks/fuzz_core.py --cases 1000000 --seed N [--report-every 100000]
                                   [--seconds S]   # stop after S seconds, if sooner

Each case drives one call of the core against state and arguments drawn from a seeded
generator (the same seed gives the same cases):

- Segment: random posted counts, gone and sleeping flags, headers in the other ranks' slots
  (the call's own, or one byte off), random data; allreduce, then sometimes finish, with
  valid and invalid arguments (negative or huge numbers, wrong kinds and ops, buffers of the
  wrong size or type, NaN waits);
- Channel: heads and tails written as a peer would (in order, across 2**64, or corrupt),
  messages of every size around the ring's, headers that match or not, a shut channel;
- pair_allreduce over socketpairs: the peer sends a whole message, more, a short or garbage
  header, nothing, or closes either way; and invalid arguments;
- __init__ with random geometry, re-__init__ that fails, calls after close.

The property checked: no crash; every call returns one of the core's codes or raises a Python
exception; the code (or exception) is the one the state calls for; nothing outside the
buffers the call was given, and outside the words and bytes it may write there, changes (the
shared memory is compared byte for byte with what the call should leave); and a DONE result
is NumPy's rank-order reduction, bit for bit (NaN for NaN in float sums). Buffers are
allocated at their exact size, so that a sanitizer build (.ci/sanitize) sees any access past
one. It prints how many cases ran and how many ended in which code or exception, and exits 1
when any case went wrong (each is printed).
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

try:
    from ringcomm import _native  # type: ignore[attr-defined]
except ImportError:  # run from a checkout: the package beside this folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ringcomm import _native  # type: ignore[attr-defined]

HEADER, LINE, SEQ_AT, RANK_AT = 128, 64, 8, 24
DONE, PENDING, MISMATCH, GONE, REDUCE = range(5)
CODE_NAMES = ("DONE", "PENDING", "MISMATCH", "GONE", "REDUCE")
DTYPES = [np.dtype(t) for t in ("float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                                "uint16", "uint32", "uint64", "bool")]
UFUNCS = (np.add, np.maximum, np.minimum, np.multiply, np.bitwise_and, np.bitwise_or,
          np.bitwise_xor)
BAD_CODES = (-1, 11, 7, 2**31, 2**40, -2**70, 10**30)
MASK64 = (1 << 64) - 1


class Wrong(Exception):
    """A case whose outcome is not the one its state calls for."""


def stamp(tmpl: bytes, seq: int) -> bytes:
    """Return the header the core writes: the template with call number `seq` at SEQ_AT."""
    return tmpl[:SEQ_AT] + seq.to_bytes(8, "little", signed=True) + tmpl[SEQ_AT + 8:]


def same_call(a: bytes, b: bytes) -> bool:
    return a[:RANK_AT] == b[:RANK_AT] and a[RANK_AT + 4:] == b[RANK_AT + 4:]


def reducible(kind: int, op: int) -> bool:
    """Whether the core reduces `kind` by `op` (the bitwise ops are for integers and bool)."""
    return (0 <= kind < len(DTYPES) and 0 <= op < len(UFUNCS)
            and (op < 4 or DTYPES[kind].kind in "biu"))


def expected(rows: list[np.ndarray], kind: int, op: int) -> np.ndarray:
    """NumPy's reduction of `rows` in rank order: out = r0; ufunc(out, r1, out=out); ..."""
    want = rows[0].copy()
    with np.errstate(all="ignore"):
        for r in rows[1:]:
            UFUNCS[op](want, r, out=want)
    return want


def agrees(got: np.ndarray, want: np.ndarray, kind: int, op: int) -> bool:
    if got.tobytes() == want.tobytes():
        return True
    if DTYPES[kind].kind == "f" and op in (0, 3):  # a sum's or product's NaN: any NaN
        # (payloads may differ)
        bits = np.uint32 if kind == 0 else np.uint64
        same = (got.view(bits) == want.view(bits)) | (np.isnan(got) & np.isnan(want))
        return bool(same.all())
    return False


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Return the offsets of the bytes that differ."""
    return np.flatnonzero(before != after)


class SegmentRig:
    """`count` ranks' Segments over one exact-size buffer (the host's segment)."""

    def __init__(self, count: int, region: int, slots_at: int, slot_bytes: int, fd: int) -> None:
        self.count, self.region, self.slots_at, self.slot_bytes = count, region, slots_at, slot_bytes
        self.args = (region, slots_at, slot_bytes)
        self.mem = np.zeros(count * region, np.uint8)
        self.q = self.mem.view(np.uint64)
        self.fds = [fd] * count
        self.cores = [_native.Segment(self.mem, j, count, region, slots_at, slot_bytes, self.fds)
                      for j in range(count)]
        self.room = slot_bytes - HEADER

    def word(self, j: int, k: int) -> int:
        return j * self.region // 8 + k

    def slot(self, j: int, which: int) -> int:
        return j * self.region + self.slots_at + which * self.slot_bytes


class ChannelRig:
    """Both ends of one link in an exact-size buffer: `a` sends on the channel at 0, which `b`
    receives on; the other channel is at `span`."""

    def __init__(self, cap: int, fd: int, shut: bool = False) -> None:
        self.cap, self.span = cap, 2 * LINE + cap
        self.mem = np.zeros(2 * self.span, np.uint8)
        self.q = self.mem.view(np.uint64)
        self.a = _native.Channel(self.mem, 0, self.span, cap, fd, fd)
        self.b = _native.Channel(self.mem, self.span, 0, cap, fd, fd)
        self.shut = shut
        if shut:
            self.a.shut()
            self.b.shut()
    # words of the channel at 0: head 0, the sender's sleeping flag 1, tail 8, the receiver's 9


class Fuzzer:
    """Cases drawn from `seed`; `run(n)` runs n more. `outcomes` counts what each case ended
    in ("segment.allreduce DONE", "channel.send RuntimeError", ...); `wrong` lists the cases
    that went wrong."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.r = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.outcomes: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.cases = 0
        # Wake-ups go to an unconnected datagram socket: every send fails, as to a gone peer.
        self.wake = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.pipe = os.pipe()  # descriptors that are not sockets
        fd = self.wake.fileno()
        self.pool = self.np_rng.integers(0, 256, 1 << 16, dtype=np.uint8)
        self.pool01 = self.np_rng.integers(0, 2, 1 << 16, dtype=np.uint8)
        # Templates: random bytes, and ones that are mostly zeros (as real headers are).
        self.templates = [bytes(self.np_rng.integers(0, 256, HEADER, dtype=np.uint8))
                          for _ in range(8)] + [bytes(HEADER), b"RCM1" + bytes(HEADER - 4)]
        # Geometries: the slots of the last rank end at the buffer's end in the second.
        self.segs = [SegmentRig(2, 1024, 64, 448, fd), SegmentRig(3, 520, 24, 248, fd),
                     SegmentRig(1, 512, 64, 224, fd), SegmentRig(5, 1408, 64, 672, fd),
                     SegmentRig(4, 304, 40, 132, fd)]
        self.chans = [ChannelRig(256, fd), ChannelRig(512, fd), ChannelRig(1024, fd),
                      ChannelRig(256, fd, shut=True)]
        self.socks: list[socket.socket] = []
        self._new_sockets()
        self.kinds = [(self.segment_case, 40), (self.channel_case, 30), (self.pair_case, 22),
                      (self.init_case, 5), (self.closed_case, 3)]
        self.pick = [f for f, w in self.kinds for _ in range(w)]

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.wake.close()
        for fd in self.pipe:
            os.close(fd)

    # -- driving ------------------------------------------------------------------------------

    def run(self, n: int) -> None:
        r = self.r
        for _ in range(n):
            case = r.choice(self.pick)
            self.cases += 1
            try:
                case()
            except Wrong as e:
                self.outcomes["WRONG"] += 1
                if len(self.wrong) < 50:
                    self.wrong.append(f"case {self.cases} (seed {self.seed}): {e}")

    def note(self, what: str, outcome: object) -> None:
        self.outcomes[f"{what} {outcome}"] += 1

    def call(self, what: str, fn: Any, *args: Any) -> tuple[int | tuple | None, str]:
        """Call fn(*args); return (its result, what it ended in: a code name or exception)."""
        try:
            got = fn(*args)
        except Exception as e:  # every exception is an outcome to count
            name = type(e).__name__
            self.note(what, name)
            return None, name
        code = got[0] if isinstance(got, tuple) else got
        if not isinstance(code, int) or not 0 <= code <= 4:
            raise Wrong(f"{what} returned {got!r}, not one of the core's codes")
        self.note(what, CODE_NAMES[code])
        return got, CODE_NAMES[code]

    def data(self, nbytes: int, kind: int, exact: bool = True) -> np.ndarray:
        """Return `nbytes` random bytes in a buffer of exactly that size (bools 0 or 1),
        sometimes at an odd address (its allocation one byte longer, the view at offset 1)."""
        src = self.pool01 if kind == 10 else self.pool
        at = self.r.randrange(0, len(src) - nbytes) if nbytes < len(src) else 0
        if self.r.random() < 0.2:
            raw = np.empty(nbytes + 1, np.uint8)
            buf = raw[1:]
        else:
            buf = np.empty(nbytes, np.uint8)
        buf[:] = src[at:at + nbytes] if nbytes <= len(src) else 0
        return buf

    def typed(self, buf: np.ndarray, kind: int) -> np.ndarray:
        return buf.view(DTYPES[kind]) if 0 <= kind < len(DTYPES) else buf

    def kind_op(self) -> tuple[int, int]:
        r = self.r
        kind = r.randrange(len(DTYPES)) if r.random() < 0.92 else r.choice(BAD_CODES)
        op = r.randrange(len(UFUNCS)) if r.random() < 0.95 else r.choice(BAD_CODES)
        return kind, op

    # -- Segment --------------------------------------------------------------------------------

    def segment_case(self) -> None:
        r = self.r
        rig = r.choice(self.segs)
        p, i = rig.count, r.randrange(rig.count)
        core = rig.cores[i]
        posts = r.randrange(0, 1000) if r.random() < 0.8 else r.randrange(0, 2**63 - 1)
        goal, kind, op = posts + 1, *self.kind_op()
        which = goal & 1
        valid = reducible(kind, op)
        isz = DTYPES[kind].itemsize if 0 <= kind < len(DTYPES) else 1
        nbytes = r.randrange(0, rig.room // isz + 1) * isz
        fault = r.choice(("",) * 14 + ("big", "ragged", "outlen", "spin", "yield", "posts",
                                        "tmpl", "tmpl_type", "src_type", "nargs", "seq"))
        if fault == "big":
            nbytes = rig.room + r.randrange(1, 64) * isz
        elif fault == "ragged":
            if isz == 1:
                fault = ""
            else:
                nbytes += r.randrange(1, isz)
        src = self.data(nbytes, kind)
        out = np.empty(nbytes + (r.choice((-1, 1)) * isz if fault == "outlen" and nbytes else
                                 isz if fault == "outlen" else 0), np.uint8)
        tmpl = r.choice(self.templates)
        seq = r.randrange(-2**63, 2**63)
        mine = stamp(tmpl, seq)
        spin = yield_ = 0.0
        state = {"pending": False, "gone": False, "mismatch": False}
        q = rig.q
        for j in range(p):
            if j == i:
                q[rig.word(j, 0)] = posts
                continue
            if r.random() < 0.92:
                q[rig.word(j, 0)] = goal + r.randrange(0, 3)
            else:
                q[rig.word(j, 0)] = r.randrange(0, goal)
                state["pending"] = True
            gone = r.random() < 0.03
            q[rig.word(j, 2)] = r.choice((1, 2**63, 7)) if gone else 0
            state["gone"] |= gone
            q[rig.word(j, 1)] = r.random() < 0.1
            at = rig.slot(j, which)
            head = mine
            if r.random() < 0.05:
                k = r.randrange(HEADER)
                head = mine[:k] + bytes([mine[k] ^ (1 << r.randrange(8))]) + mine[k + 1:]
                state["mismatch"] = True
            rig.mem[at:at + HEADER] = np.frombuffer(head, np.uint8)
            n = min(nbytes, rig.room)
            rig.mem[at + HEADER:at + HEADER + n] = self.data(n, kind)
        args: list[Any] = [src, out, mine if r.random() < 0.5 else tmpl, seq, posts, kind, op,
                           spin, yield_]
        want_exc: tuple[type[BaseException], ...] | None = None
        if fault in ("big", "ragged", "outlen"):
            want_exc = (ValueError,)
        elif fault in ("spin", "yield"):
            args[7 if fault == "spin" else 8] = r.choice((float("nan"), -1.0, float("inf"), -0.5))
            want_exc = (ValueError,)
        elif fault == "posts":
            args[4] = r.choice((-1, -2**63, 2**64, 2**70))
            want_exc = (ValueError, OverflowError)
        elif fault == "seq":
            args[3] = r.choice((2**63, -2**63 - 1, 2**100))
            want_exc = (OverflowError,)
        elif fault == "tmpl":
            args[2] = tmpl[:r.randrange(HEADER)] if r.random() < 0.5 else tmpl + b"x"
            want_exc = (ValueError,)
        elif fault == "tmpl_type":
            args[2] = r.choice((bytearray(tmpl), "x" * HEADER, None, memoryview(tmpl)))
            want_exc = (TypeError,)
        elif fault == "src_type":
            k, bad = r.choice((0, 1)), r.choice(("text", None, 3, np.zeros(8)[::2], bytes(nbytes)))
            args[k] = bad
            if k == 0 and isinstance(bad, bytes):  # a read-only source is a source
                src = np.frombuffer(bad, np.uint8)
            else:
                want_exc = (TypeError, ValueError, BufferError)
        elif fault == "nargs":
            args = args[:r.randrange(9)] if r.random() < 0.5 else args + [0]
            want_exc = (TypeError,)
        before = rig.mem.copy()
        got, outcome = self.call("segment.allreduce", core.allreduce, *args)
        if want_exc is not None:
            if not any(outcome == e.__name__ for e in want_exc):
                raise Wrong(f"segment.allreduce {fault}: {outcome}, not {want_exc}")
            diff = changed(before, rig.mem)
            if diff.size:
                raise Wrong(f"segment.allreduce {fault} raised {outcome} after writing "
                            f"{diff.size} bytes (first at {diff[0]})")
            return
        if got is None:
            raise Wrong(f"segment.allreduce ({fault or 'valid'}): raised {outcome}")
        code = CODE_NAMES.index(outcome)
        want = (PENDING if state["pending"] else GONE if state["gone"] else
                MISMATCH if state["mismatch"] else REDUCE if not valid else DONE)
        if code != want:
            raise Wrong(f"segment.allreduce: {outcome}, not {CODE_NAMES[want]} ({state}, "
                        f"kind {kind}, op {op})")
        # What it may write: its own slot (header, data) and its posted count.
        allowed = before.copy()
        at = rig.slot(i, which)
        allowed[at:at + HEADER] = np.frombuffer(mine, np.uint8)
        allowed[at + HEADER:at + HEADER + src.size] = src
        allowed.view(np.uint64)[rig.word(i, 0)] = goal
        diff = changed(allowed, rig.mem)
        if diff.size:
            raise Wrong(f"segment.allreduce wrote {diff.size} bytes it should not have (first "
                        f"at {diff[0]}: {before[diff[0]]} -> {rig.mem[diff[0]]})")
        if code == DONE:
            self.check_rows(rig, which, i, src, out, kind, op, "segment.allreduce")
        if code == PENDING and r.random() < 0.6:
            self.finish_case(rig, i, goal, which, kind, op, valid, state, src.size)

    def check_rows(self, rig: SegmentRig, which: int, i: int, src: np.ndarray, out: np.ndarray,
                   kind: int, op: int, what: str) -> None:
        n = out.size
        rows = [self.typed(rig.mem[rig.slot(j, which) + HEADER:][:n].copy(), kind)
                for j in range(rig.count)]
        want = expected(rows, kind, op)
        if not agrees(self.typed(out, kind), want, kind, op):
            raise Wrong(f"{what}: DONE with the wrong result (kind {kind}, op {op}, {n} bytes)")

    def finish_case(self, rig: SegmentRig, i: int, goal: int, which: int, kind: int, op: int,
                    valid: bool, state: dict, nbytes: int) -> None:
        r = self.r
        q = rig.q
        late = r.random() < 0.1 and rig.count > 1
        for j in range(rig.count):
            if j != i:
                q[rig.word(j, 0)] = goal
        if late:
            j = r.choice([j for j in range(rig.count) if j != i])
            q[rig.word(j, 0)] = goal - 1
        isz = DTYPES[kind].itemsize if 0 <= kind < len(DTYPES) else 1
        fault = r.choice(("",) * 6 + ("big", "ragged", "posts"))
        n = nbytes
        if fault == "big":
            n = rig.room + r.randrange(1, 1 << 12) * isz
        elif fault == "ragged" and isz > 1:
            n += r.randrange(1, isz)
        elif fault == "ragged":
            fault = ""
        out = np.empty(n, np.uint8)
        posts = goal if fault != "posts" else r.choice((0, -1, -2**63))
        before = rig.mem.copy()
        got, outcome = self.call("segment.finish", rig.cores[i].finish, out, posts, kind, op)
        if changed(before, rig.mem).size:
            raise Wrong("segment.finish wrote into the segment")
        if fault:
            if outcome != "ValueError":
                raise Wrong(f"segment.finish {fault}: {outcome}, not ValueError")
            return
        if late:
            if outcome != "RuntimeError":
                raise Wrong(f"segment.finish before every post: {outcome}, not RuntimeError")
            return
        want = (GONE if state["gone"] else MISMATCH if state["mismatch"] else
                REDUCE if not valid else DONE)
        if outcome != CODE_NAMES[want]:
            raise Wrong(f"segment.finish: {outcome}, not {CODE_NAMES[want]}")
        if want == DONE:
            self.check_rows(rig, which, i, out, out, kind, op, "segment.finish")

    # -- Channel --------------------------------------------------------------------------------

    def counters(self, cap: int) -> tuple[int, int, bool]:
        """Return a (head, tail) a peer may leave, and whether they are corrupt."""
        r = self.r
        tail = r.randrange(0, 1 << 20) if r.random() < 0.7 else r.randrange(0, 1 << 64)
        if r.random() < 0.1:
            how = r.randrange(3)
            if how == 0:  # a tail beyond the head
                return tail, (tail + r.randrange(1, 1 << 63)) & MASK64, True
            if how == 1:  # a head more than the ring past the tail
                return (tail + cap + r.randrange(1, 1 << 40)) & MASK64, tail, True
            return tail, (tail + 1) & MASK64, True
        return (tail + r.randrange(0, cap + 1)) & MASK64, tail, False

    def channel_case(self) -> None:
        r = self.r
        rig = r.choice(self.chans)
        cap, q = rig.cap, rig.q
        head, tail, corrupt = self.counters(cap)
        q[0], q[8] = head, tail
        q[1], q[9] = r.random() < 0.1, r.random() < 0.1  # sleeping flags
        used = (head - tail) & MASK64
        tmpl, seq = r.choice(self.templates), r.randrange(-2**63, 2**63)
        mine = stamp(tmpl, seq)
        if r.random() < 0.85:
            n = r.randrange(0, cap - HEADER + 1)
        else:
            n = r.randrange(cap - HEADER + 1, 4 * cap)
        fault = r.choice(("",) * 16 + ("tmpl", "seq", "nargs", "buf", "spin"))
        if r.random() < 0.5:
            self.send_case(rig, head, tail, corrupt, used, tmpl, seq, mine, n, fault)
        else:
            self.recv_case(rig, head, tail, corrupt, used, tmpl, seq, mine, n, fault)

    def _fault_args(self, args: list, fault: str, tmpl: bytes, nargs: int) -> bool:
        r = self.r
        if fault == "tmpl":
            args[0] = r.choice((tmpl[:100], tmpl + b"\0", bytearray(tmpl), None))
        elif fault == "seq":
            args[1] = r.choice((2**63, -2**64, "1"))
        elif fault == "nargs":
            del args[r.randrange(nargs):]
        elif fault == "buf":
            args[2] = r.choice(("x", None, np.zeros(8)[::2]))
        else:
            return False
        return True

    def send_case(self, rig: ChannelRig, head: int, tail: int, corrupt: bool, used: int,
                  tmpl: bytes, seq: int, mine: bytes, n: int, fault: str) -> None:
        cap, mem = rig.cap, rig.mem
        data = self.data(n, 6)
        args: list[Any] = [tmpl, seq, data]
        faulty = self._fault_args(args, fault, tmpl, 3)
        before = mem.copy()
        got, outcome = self.call("channel.send", rig.a.send, *args)
        if faulty:
            if got is not None:
                raise Wrong(f"channel.send {fault}: {outcome}, not an exception")
            if changed(before, mem).size:
                raise Wrong(f"channel.send {fault} raised after writing")
            return
        if rig.shut or n > cap - HEADER:
            want = "PENDING"
        elif corrupt:
            want = "RuntimeError"
        else:
            want = "DONE" if HEADER + n <= cap - used else "PENDING"
        if outcome != want:
            raise Wrong(f"channel.send: {outcome}, not {want} (head {head}, tail {tail}, cap "
                        f"{cap}, {n} bytes, shut {rig.shut})")
        allowed = before.copy()
        if want == "DONE":
            msg = np.concatenate((np.frombuffer(mine, np.uint8), data))
            pos = (head + np.arange(msg.size, dtype=np.uint64)) & np.uint64(cap - 1)
            allowed[2 * LINE + pos.astype(np.int64)] = msg
            allowed.view(np.uint64)[0] = (head + msg.size) & MASK64
        diff = changed(allowed, mem)
        if diff.size:
            raise Wrong(f"channel.send {outcome} left {diff.size} bytes other than it should "
                        f"(first at {diff[0]})")

    def recv_case(self, rig: ChannelRig, head: int, tail: int, corrupt: bool, used: int,
                  tmpl: bytes, seq: int, mine: bytes, n: int, fault: str) -> None:
        r = self.r
        cap, mem = rig.cap, rig.mem
        # The message at the tail, as the peer wrote it: our header but for the sender's rank
        # (or one byte off elsewhere), then data; wrapping at the ring's end.
        theirs = bytearray(mine)
        theirs[RANK_AT:RANK_AT + 4] = r.randrange(1 << 32).to_bytes(4, "little")
        differs = r.random() < 0.1
        if differs:
            k = r.choice([k for k in range(HEADER) if not RANK_AT <= k < RANK_AT + 4])
            theirs[k] ^= 1 << r.randrange(8)
        m = min(n, cap - HEADER)
        body = self.data(m, 6)
        msg = np.concatenate((np.frombuffer(bytes(theirs), np.uint8), body))
        pos = ((tail + np.arange(msg.size, dtype=np.uint64)) & np.uint64(cap - 1)).astype(np.int64)
        mem[2 * LINE + pos] = msg
        out = np.empty(n, np.uint8) if r.random() < 0.5 else self.data(n, 6)
        args: list[Any] = [tmpl, seq, out, 0.0, 0.0]
        faulty = self._fault_args(args, fault, tmpl, 5)
        if fault == "spin":
            args[r.choice((3, 4))] = r.choice((float("nan"), -1.0, float("inf")))
            faulty = True
        before = mem.copy()
        got, outcome = self.call("channel.recv", rig.b.recv, *args)
        if faulty:
            if got is not None:
                raise Wrong(f"channel.recv {fault}: {outcome}, not an exception")
            if changed(before, mem).size:
                raise Wrong(f"channel.recv {fault} raised after writing")
            return
        need = HEADER + n
        if n > cap - HEADER or rig.shut:
            want = "PENDING"
        elif corrupt:
            want = "RuntimeError"
        elif used < need:
            want = "PENDING"
        else:
            want = "MISMATCH" if differs else "DONE"
        if outcome != want:
            raise Wrong(f"channel.recv: {outcome}, not {want} (head {head}, tail {tail}, cap "
                        f"{cap}, {n} bytes, shut {rig.shut})")
        allowed = before.copy()
        if want == "DONE":
            allowed.view(np.uint64)[8] = (tail + need) & MASK64
            if out.tobytes() != body.tobytes():
                raise Wrong("channel.recv: DONE with other bytes than the ring held")
        diff = changed(allowed, mem)
        if diff.size:
            raise Wrong(f"channel.recv {outcome} left {diff.size} bytes other than it should "
                        f"(first at {diff[0]})")

    # -- pair_allreduce -------------------------------------------------------------------------

    def _new_sockets(self) -> None:
        for s in self.socks:
            s.close()
        to_peer, from_peer = socket.socketpair(), socket.socketpair()
        for s in to_peer + from_peer:
            s.setblocking(False)
        # ours: to_peer[0] (send), from_peer[1] (receive); the peer's: the other two
        self.socks = [to_peer[0], from_peer[1], to_peer[1], from_peer[0]]

    def _drain(self, s: socket.socket) -> bytes:
        got = []
        while True:
            try:
                b = s.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not b:
                break
            got.append(b)
        return b"".join(got)

    def pair_case(self) -> None:
        r = self.r
        out_s, in_s, peer_in, peer_out = self.socks
        kind, op = self.kind_op()
        valid = reducible(kind, op)
        isz = DTYPES[kind].itemsize if 0 <= kind < len(DTYPES) else 1
        nbytes = r.randrange(0, 2048 // isz + 1) * isz
        rank = r.randrange(2)
        tmpl, seq = r.choice(self.templates), r.randrange(-2**63, 2**63)
        mine = stamp(tmpl, seq)
        n = HEADER + nbytes
        src = self.data(nbytes, kind)
        out = np.empty(nbytes, np.uint8)
        rows = np.empty(2 * n, np.uint8)
        theirs_data = self.data(nbytes, kind)
        theirs = bytearray(mine)
        theirs[RANK_AT:RANK_AT + 4] = r.randrange(1 << 32).to_bytes(4, "little")
        peer = r.choice(("whole",) * 8 + ("more", "short", "garbage", "short_garbage", "nothing",
                                          "close", "close_reader"))
        if peer == "garbage":
            k = r.choice([k for k in range(HEADER) if not RANK_AT <= k < RANK_AT + 4])
            theirs[k] ^= 1 << r.randrange(8)
        message = bytes(theirs) + theirs_data.tobytes()
        sent_by_peer = b""
        if peer in ("whole", "garbage"):
            sent_by_peer = message
        elif peer == "more":
            sent_by_peer = message + bytes(r.randrange(1, 300))
        elif peer in ("short", "close"):
            sent_by_peer = message[:r.randrange(0, n)]
        elif peer == "short_garbage":
            sent_by_peer = bytes(self.pool[:r.randrange(0, HEADER)])
        if sent_by_peer:
            self._send_all(peer_out, sent_by_peer)
        if peer == "close":
            peer_out.shutdown(socket.SHUT_WR)
        if peer == "close_reader":
            peer_in.close()
        fault = r.choice(("",) * 16 + ("fd", "rank", "tmpl", "rows", "out", "spin", "ragged",
                                        "nargs", "notsock"))
        args: list[Any] = [out_s.fileno(), in_s.fileno(), rows, rank, tmpl, seq, src, out,
                           kind, op, 0.0]
        want_exc: tuple[str, ...] = ()
        if fault == "fd":
            args[r.randrange(2)] = r.choice((-1, -5, 2**31, 2**63))
            want_exc = ("ValueError",)
        elif fault == "rank":
            args[3] = r.choice((2, -1, 2**32, 2**64))
            want_exc = ("ValueError",)
        elif fault == "tmpl":
            args[4] = r.choice((tmpl[:1], tmpl + b"1", None, bytearray(tmpl)))
            want_exc = ("ValueError", "TypeError")
        elif fault == "rows":
            args[2] = np.empty(2 * n + r.choice((-1, 1, 2)), np.uint8)
            want_exc = ("ValueError",)
        elif fault == "out":
            args[7] = np.empty(nbytes + r.choice((1, 8)), np.uint8)
            want_exc = ("ValueError",)
        elif fault == "spin":
            args[10] = r.choice((float("nan"), -1.0, float("inf")))
            want_exc = ("ValueError",)
        elif fault == "ragged" and isz > 1:
            extra = r.randrange(1, isz)
            args[6], args[7] = self.data(nbytes + extra, 6), np.empty(nbytes + extra, np.uint8)
            args[2] = np.empty(2 * (n + extra), np.uint8)
            want_exc = ("ValueError",)
        elif fault == "nargs":
            del args[r.randrange(11):]
            want_exc = ("TypeError",)
        elif fault == "notsock":
            args[0] = self.pipe[1]
        got, outcome = self.call("pair_allreduce", _native.pair_allreduce, *args)
        try:
            self._check_pair(got, outcome, want_exc, fault, peer, n, rank, mine, src, rows, out,
                             sent_by_peer, message, kind, op, valid, theirs_data)
        finally:  # nothing of this case is left for the next one
            self._drain(in_s)
            if peer != "close_reader":
                self._drain(peer_in)
            if peer in ("close", "close_reader") or fault == "notsock":
                self._new_sockets()

    def _send_all(self, s: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[s.send(view):]

    def _check_pair(self, got: Any, outcome: str, want_exc: tuple[str, ...], fault: str, peer: str,
                    n: int, rank: int, mine: bytes, src: np.ndarray, rows: np.ndarray,
                    out: np.ndarray, sent_by_peer: bytes, message: bytes, kind: int, op: int,
                    valid: bool, theirs_data: np.ndarray) -> None:
        out_s, in_s, peer_in, peer_out = self.socks
        if want_exc:
            if outcome not in want_exc:
                raise Wrong(f"pair_allreduce {fault}: {outcome}, not {want_exc}")
            if peer != "close_reader" and self._peek(peer_in):
                raise Wrong(f"pair_allreduce {fault} raised after sending")
            return
        if got is None:
            raise Wrong(f"pair_allreduce ({peer}, {fault}): raised {outcome}")
        code, sent, taken, send_err, recv_err = got
        if fault == "notsock":
            if (code, send_err) != (GONE, errno.ENOTSOCK):
                raise Wrong(f"pair_allreduce to a pipe: {got}, not GONE with ENOTSOCK")
            return
        if peer == "close_reader":
            if code != GONE or send_err not in (errno.EPIPE, errno.ECONNRESET):
                raise Wrong(f"pair_allreduce to a closed reader: {got}")
            return
        have = min(len(sent_by_peer), n)
        if peer == "close" and have < n:
            want = (GONE, n, have, 0, -1)
        elif peer in ("garbage",):
            want = (MISMATCH, n, None, 0, 0)  # stops as soon as the header is in
        elif have < n:
            want = (PENDING, n, have, 0, 0)
        else:
            want = (DONE if valid else REDUCE, n, n, 0, 0)
        if (code, sent, send_err, recv_err) != (want[0], want[1], want[3], want[4]) or (
                want[2] is not None and taken != want[2]):
            raise Wrong(f"pair_allreduce ({peer}): {got}, not {want}")
        if want[0] == MISMATCH and not HEADER <= taken <= n:
            raise Wrong(f"pair_allreduce MISMATCH with {taken} bytes taken")
        # What it sent is this rank's row: the header, then `src`; and its row is in `rows`.
        row = mine + src.tobytes()
        if self._drain(peer_in) != row:
            raise Wrong("pair_allreduce sent other bytes than its row")
        if rows[rank * n:(rank + 1) * n].tobytes() != row:
            raise Wrong("pair_allreduce: its own row is not header and src")
        other = rows[(1 - rank) * n:][:taken].tobytes()
        if other != sent_by_peer[:taken]:
            raise Wrong("pair_allreduce: the other's row is not what the peer sent")
        if peer == "more":
            rest = self._drain(in_s)
            if len(rest) != len(sent_by_peer) - n:
                raise Wrong(f"pair_allreduce took {len(sent_by_peer) - len(rest)} bytes, not {n}")
        if code == DONE:
            a = self.typed(src.copy(), kind)
            b = self.typed(theirs_data.copy(), kind)
            want_out = expected([a, b] if rank == 0 else [b, a], kind, op)
            if not agrees(self.typed(out, kind), want_out, kind, op):
                raise Wrong(f"pair_allreduce: DONE with the wrong result (kind {kind}, op {op})")

    def _peek(self, s: socket.socket) -> bool:
        try:
            return bool(s.recv(1, socket.MSG_PEEK))
        except (BlockingIOError, InterruptedError):
            return False

    # -- __init__, re-__init__, close -------------------------------------------------------------

    def init_case(self) -> None:
        r = self.r
        if r.random() < 0.5:
            # A geometry that fits (count ranks of 512 bytes), then each field perhaps off.
            count, index, region, slots_at, slot_bytes = r.randrange(1, 5), 0, 512, 64, 224
            index = r.randrange(count)
            size = count * region + r.choice((0, 0, 8, 512))
            if r.random() < 0.7:
                count = r.choice((count, 256, 257, 0, -1))
            if r.random() < 0.3:
                index = r.choice((0, 1, count - 1, count, -1))
            if r.random() < 0.3:
                region = r.choice((520, 8, 0, -8, 2**62, 2**61 + 8, 1 << 12, 516, 504))
            if r.random() < 0.3:
                slots_at = r.choice((24, 16, 0, -64, region, region // 2, 288))
            if r.random() < 0.3:
                slot_bytes = r.choice((128, 248, 127, 0, -1, 2**62, region // 2 - 32, 225))
            mem = np.zeros(size, np.uint8)
            fds = [self.wake.fileno()] * max(count, 0)
            if r.random() < 0.1:
                fds = fds[:-1] if fds else [0]
            if r.random() < 0.05 and fds:
                fds[r.randrange(len(fds))] = r.choice((-2, 2**31, "x", 1.5))
            args = (mem, index, count, region, slots_at, slot_bytes, fds)
            obj, outcome = self._make(_native.Segment, args, "init.Segment")
            ok = (1 <= count <= 256 and 0 <= index < count and region > 0 and region % 8 == 0
                  and slots_at >= 24 and slot_bytes >= HEADER
                  and slots_at + 2 * slot_bytes <= region and count * region <= size
                  and len(fds) == count
                  and all(isinstance(f, int) and -1 <= f < 2**31 for f in fds))
            if (obj is not None) != ok:
                raise Wrong(f"Segment{args[1:]} over {size} bytes: {outcome}")
            if obj is None:
                return
            # Fill this rank's slot to its end, and finish on both slots: all in bounds.
            room = slot_bytes - HEADER
            x = self.data(room, 6)
            code = obj.allreduce(x, np.empty(room, np.uint8), bytes(HEADER), 1, 0, 6, 0, 0.0, 0.0)
            if code not in (DONE, PENDING):
                raise Wrong(f"a new Segment's first call: {code}")
            obj.close()
        else:
            # Two channels that fit, one after the other (either way round), then perhaps off.
            cap = r.choice((256, 512, 1024))
            size = r.choice((2, 3)) * (2 * LINE + cap) + r.choice((0, 64))
            out_at, in_at = (0, 2 * LINE + cap)[::r.choice((1, -1))]
            if r.random() < 0.3:
                cap = r.choice((255, 0, -256, 2**61, 3 * 256, 2048, 4096))
            if r.random() < 0.3:
                out_at = r.choice((64, 128, 1024, 2048, -64, 8, size))
            if r.random() < 0.3:
                in_at = r.choice((0, 64, 1024, 1152, 2048, 3072, -64, 2**62))
            mem = np.zeros(size, np.uint8)
            args = (mem, out_at, in_at, cap, r.choice((-1, 3, -2)), r.choice((-1, 3)))
            obj, outcome = self._make(_native.Channel, args, "init.Channel")
            span = 2 * LINE + cap
            ok = (cap >= 256 and cap & (cap - 1) == 0 and out_at >= 0 and in_at >= 0
                  and out_at % 64 == 0 and in_at % 64 == 0 and max(out_at, in_at) + span <= size
                  and abs(out_at - in_at) >= span and args[4] >= -1 and args[5] >= -1)
            if (obj is not None) != ok:
                raise Wrong(f"Channel{args[1:]} over {size} bytes: {outcome}")
            if obj is None:
                return
            m = cap - HEADER
            if obj.send(bytes(HEADER), 1, self.data(m, 6)) != DONE:
                raise Wrong("a new Channel's first send of a whole ring")
            obj.close()

    def _make(self, cls: Any, args: tuple, what: str) -> tuple[Any, str]:
        try:
            obj = cls(*args)
        except Exception as e:  # an outcome to count
            self.note(what, type(e).__name__)
            return None, type(e).__name__
        self.note(what, "made")
        return obj, "made"

    def closed_case(self) -> None:
        """A failed re-__init__ changes nothing; a closed object refuses every call."""
        r = self.r
        if r.random() < 0.5:
            rig = r.choice(self.segs)
            core = rig.cores[r.randrange(rig.count)]
            bad = [rig.mem, 0, rig.count, *rig.args, rig.fds]
            k = r.randrange(7)
            bad[k] = {0: np.zeros(8, np.uint8), 1: -1, 2: 0, 3: rig.region * 64, 4: 8,
                      5: rig.region, 6: None}[k]
            if k == 1 and rig.count == 1:
                bad[1] = 5
            _, outcome = self._make(lambda *a: core.__init__(*a), tuple(bad), "reinit.Segment")
            if outcome == "made":
                raise Wrong(f"Segment.__init__ with {k} wrong: made")
            # The rig's next cases check that the geometry is the old one.
            extra = _native.Segment(rig.mem, 0, rig.count, *rig.args, rig.fds)
            extra.close()
            extra.close()
            _, outcome = self.call("closed.Segment", extra.allreduce, np.zeros(4, np.uint8),
                                   np.zeros(4, np.uint8), bytes(HEADER), 0, 0, 6, 0, 0.0, 0.0)
            if outcome != "ValueError":
                raise Wrong(f"a closed Segment's call: {outcome}")
        else:
            rig = r.choice(self.chans)
            bad: list[Any] = [rig.mem, 0, rig.span, rig.cap, -1, -1]
            k = r.randrange(1, 4)
            bad[k] = {1: 8, 2: 0, 3: rig.cap * 4}[k]
            _, outcome = self._make(lambda *a: rig.a.__init__(*a), tuple(bad), "reinit.Channel")
            if outcome == "made":
                raise Wrong(f"Channel.__init__ with {k} wrong: made")
            extra = _native.Channel(rig.mem, 0, rig.span, rig.cap, -1, -1)
            extra.close()
            _, outcome = self.call("closed.Channel", extra.recv, bytes(HEADER), 0,
                                   np.zeros(4, np.uint8), 0.0, 0.0)
            if outcome != "ValueError":
                raise Wrong(f"a closed Channel's call: {outcome}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-every", type=int, default=0, help="print progress every N cases")
    ap.add_argument("--seconds", type=float, default=0.0,
                    help="stop after this long (at the next 1000 cases) if the cases take longer")
    a = ap.parse_args(argv)
    print(f"core: {_native.__file__}", flush=True)
    fuzzer = Fuzzer(a.seed)
    start = time.perf_counter()
    step = min(a.report_every or a.cases, 1000 if a.seconds else a.cases)
    report = a.report_every
    try:
        while fuzzer.cases < a.cases:
            fuzzer.run(min(step, a.cases - fuzzer.cases))
            t = time.perf_counter() - start
            if report and fuzzer.cases % report == 0:
                print(f"{fuzzer.cases} cases, {t:.1f} s, {fuzzer.outcomes['WRONG']} wrong",
                      flush=True)
            if a.seconds and t >= a.seconds:
                print(f"stopped after {t:.1f} s (--seconds {a.seconds:g})", flush=True)
                break
    finally:
        fuzzer.close()
    seconds = time.perf_counter() - start
    print(f"seed {a.seed}: {fuzzer.cases} cases in {seconds:.1f} s "
          f"({fuzzer.cases / max(seconds, 1e-9):.0f} per second)")
    for what, count in sorted(fuzzer.outcomes.items()):
        print(f"  {count:9d}  {what}")
    for line in fuzzer.wrong:
        print("WRONG", line)
    return 1 if fuzzer.outcomes["WRONG"] else 0


if __name__ == "__main__":
    sys.exit(main())
