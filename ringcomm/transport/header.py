"""The 128-byte header every TCP message starts with: a call's signature on the wire.

A header carries the call's op, sequence number, group, dtype, shape, the
sender's rank and the op's argument. The receiver compares it with the call it
is making itself (`Signature.differs`), so ranks that disagree learn it before
a single byte of data is read as an array.
"""

from __future__ import annotations

import hashlib
import struct

from ..arrays import dtype_code, dtype_from_code
from ..signature import Op, Signature

__all__ = ["MAX_DIMS", "RANK_AT", "SEQ_AT", "SIZE", "dims_differ", "pack", "stamp", "unpack"]

MAGIC = b"RCM1"
MAX_DIMS = _MAX_DIMS = 11
_FMT = struct.Struct(f"<4sBBBxqQii{_MAX_DIMS}q")
SIZE = 128
assert _FMT.size <= SIZE
# Where the call number and the sender's rank lie (the compiled core asserts the same at load).
SEQ_AT = struct.calcsize("<4sBBBx")
RANK_AT = SEQ_AT + struct.calcsize("<qQ")
assert (SEQ_AT, RANK_AT) == (8, 24)


def stamp(template: bytes, seq: int) -> bytes:
    """Return `template` (a header packed with call number 0) numbered `seq`."""
    return template[:SEQ_AT] + seq.to_bytes(8, "little", signed=True) + template[SEQ_AT + 8:]


def _dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return the shape padded to _MAX_DIMS; longer shapes end in a digest of the rest."""
    if len(shape) <= _MAX_DIMS:
        return tuple(shape) + (0,) * (_MAX_DIMS - len(shape))
    rest = hashlib.blake2b(repr(shape).encode(), digest_size=8).digest()
    return tuple(shape[: _MAX_DIMS - 1]) + (int.from_bytes(rest, "little", signed=True),)


def pack(sig: Signature) -> bytes:
    """Return the 128-byte header of `sig`."""
    body = _FMT.pack(
        MAGIC, int(sig.op), dtype_code(sig.dtype), len(sig.shape), sig.seq,
        sig.group, sig.rank, sig.arg, *_dims(sig.shape),
    )
    return body.ljust(SIZE, b"\0")


def dims_differ(mine: Signature, data: bytes | bytearray | memoryview) -> str | None:
    """Return what differs between the shape of call `mine` and that of the header `data`,
    as far as `Signature.differs` cannot see it: for shapes of more than MAX_DIMS
    dimensions the header holds the first ten and a digest of the whole shape, and
    `unpack` gives the rest back as unknown (-1), so the digests are compared here."""
    if len(mine.shape) <= _MAX_DIMS:
        return None
    theirs = _FMT.unpack_from(data)[-_MAX_DIMS:]
    if tuple(theirs) != _dims(mine.shape):
        return "the shapes differ"
    return None


def unpack(data: bytes | bytearray | memoryview) -> Signature | None:
    """Return the signature in `data`, or None when it is not a ringcomm header.

    Dimensions past the header's room come back as -1 (unknown).
    """
    magic, op, code, ndim, seq, group, rank, arg, *dims = _FMT.unpack_from(data)
    dt = dtype_from_code(code)
    if magic != MAGIC or dt is None or op not in Op._value2member_map_:
        return None
    shape = tuple(dims[: min(ndim, _MAX_DIMS)])
    if ndim > _MAX_DIMS:
        shape = tuple(dims[: _MAX_DIMS - 1]) + (-1,) * (ndim - _MAX_DIMS + 1)
    return Signature(Op(op), seq, group, dt, shape, rank, arg)
