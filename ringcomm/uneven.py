"""Collectives whose ranks bring different numbers of rows: all_gather_v, reduce_scatter_v and
all_to_all_v (uneven tensor-parallel splits, expert-parallel routing).

Each call opens with one agreement round: a small all_gather, checked as the call's own op,
of one row per rank that holds its number of rows, its dtype, a digest of its shape past axis
0, and the counts it was given. Every rank then holds the same table, so where the ranks
disagree (counts that differ, counts that do not match the rows a rank brought, a dtype or a
trailing shape of its own) every rank raises the same MismatchError before any data moves,
rather than one rank waiting for bytes that never come. The data then moves through the
group's equal-size collective, each rank's block padded to the largest block of the call:
the counts are known to all, so nothing of the padding reaches a result. Padding costs
bandwidth where the blocks differ much (a block of the largest size crosses every link); a
call whose blocks are all equal takes the equal-size collective as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .arrays import adapt, check_dtype, dtype_code
from .errors import MismatchError
from .frameworks import register
from .group import Group, Work
from .ops import _call, _fw, _group, _ndarray, reduce_op
from .signature import Op, ReduceOp

__all__ = ["all_gather_v", "all_to_all_v", "reduce_scatter_v"]

_GIVEN, _NONE, _BAD = 0, 1, 2  # how a rank's counts came: given, not given, not usable


def _trailing(a: np.ndarray) -> int:
    """Return a digest of `a`'s shape past axis 0 (int64)."""
    d = hashlib.blake2b(repr(tuple(a.shape[1:])).encode(), digest_size=8).digest()
    return int.from_bytes(d, "little", signed=True)


def _counts(counts: Sequence[int] | Any | None, p: int) -> tuple[int, list[int]]:
    """Return how `counts` came and the counts (zeros unless given right)."""
    if counts is None:
        return _NONE, [0] * p
    try:
        c = [int(v) for v in counts]
    except (TypeError, ValueError):
        return _BAD, [0] * p
    if len(c) != p or min(c, default=0) < 0:
        return _BAD, [0] * p
    return _GIVEN, c


def _table(g: Group, op: Op, a: np.ndarray, *parts: tuple[int, list[int]]) -> np.ndarray:
    """Gather every rank's row (rows, dtype, trailing shape, then each (status, counts)) and
    check what every call must share; return the table, one row per rank."""
    b = g._backend
    row = [a.shape[0], dtype_code(a.dtype), _trailing(a)]
    for status, c in parts:
        row += [status, *c]
    mine = np.array(row, dtype=np.int64)
    table = np.empty((b.size, mine.size), dtype=np.int64)
    b._all_gather_as(mine, table.reshape(-1), op, 0)
    label = op.label
    if len(set(table[:, 1])) > 1:
        raise _mismatch(label, "the dtypes differ", table[:, 1], "dtype codes")
    if len(set(table[:, 2])) > 1:
        raise _mismatch(label, "the shapes past axis 0 differ", table[:, 2], "shape digests")
    for i in range(len(parts)):
        at = 3 + i * (b.size + 1)
        bad = [r for r in range(b.size) if table[r, at] == _BAD]
        if bad:
            raise MismatchError(
                f"{label}: rank{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} passed "
                f"counts that are not {b.size} non-negative integers (one per rank of the "
                "group); every rank must pass the same counts")
    return table


def _mismatch(label: str, what: str, values: np.ndarray, name: str) -> MismatchError:
    by = ", ".join(f"rank {r}: {int(v)}" for r, v in enumerate(values))
    return MismatchError(f"{label}: {what} between ranks ({name} {by}); every rank must make "
                         "the same call with the same dtype and shape past axis 0")


def _counts_of(table: np.ndarray, at: int, p: int) -> list[tuple[int, list[int]]]:
    return [(int(row[at]), [int(v) for v in row[at + 1:at + 1 + p]]) for row in table]


def _rows(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.reshape(1) if a.ndim == 0 else a)


def _padded(a: np.ndarray, blocks: list[tuple[int, int]], m: int) -> np.ndarray:
    """Return len(blocks) blocks of `m` rows, block k holding rows [start, start+n) of `a`."""
    out = np.zeros((len(blocks) * m,) + a.shape[1:], dtype=a.dtype)
    for k, (start, n) in enumerate(blocks):
        out[k * m:k * m + n] = a[start:start + n]
    return out


def _offsets(counts: list[int]) -> list[int]:
    return [int(v) for v in np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))]


def all_gather_v(x: Any, counts: Sequence[int] | None = None, *, group: Group | None = None,
                 stream: object = None, async_op: bool = False) -> Any | Work:
    """Return every rank's `x` concatenated along axis 0 in rank order, where ranks bring
    different numbers of rows. `counts` is every rank's number of rows (the same sequence on
    every rank), or None to learn them in the call; a disagreement is a MismatchError on
    every rank."""
    if type(x) is not _ndarray:
        if (r := _fw("all_gather_v", x, (counts,), group, stream, async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "all_gather_v")
    g = _group(group)
    b = g._backend
    src = _rows(ad.array)
    given = _counts(counts, b.size)

    def run() -> Any:
        p = b.size
        table = _table(g, Op.ALL_GATHER_V, src, given)
        have = [int(v) for v in table[:, 0]]
        for r, (status, c) in enumerate(_counts_of(table, 3, p)):
            if status == _GIVEN and c != have:
                raise MismatchError(
                    f"all_gather_v: rank {r} passed counts {c} but the ranks brought {have} "
                    "rows; counts[i] must be rank i's number of rows, the same on every rank")
        m = max(have)
        if all(n == m for n in have):
            out = np.empty((p * m,) + src.shape[1:], dtype=src.dtype)
            if m:
                b.all_gather(src, out)
            return ad.wrap(out)
        every = np.empty((p * m,) + src.shape[1:], dtype=src.dtype)
        b.all_gather(_padded(src, [(0, src.shape[0])], m), every)
        out = np.concatenate([every[r * m:r * m + n] for r, n in enumerate(have)])
        return ad.wrap(out)
    return _call(g, "all_gather_v", run, async_op, (src,))


def reduce_scatter_v(x: Any, counts: Sequence[int], op: ReduceOp | str = "sum", *,
                     group: Group | None = None, stream: object = None,
                     async_op: bool = False) -> Any | Work:
    """Reduce `x` (sum(counts) rows on every rank) over ranks by `op` and return, on rank r,
    rows [sum(counts[:r]), sum(counts[:r+1])) of the result. `counts` must be the same on
    every rank; a disagreement is a MismatchError on every rank."""
    rop = reduce_op(op)
    if type(x) is not _ndarray:
        if (r := _fw("reduce_scatter_v", x, (counts,), group, stream, async_op,
                     op=rop)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "reduce_scatter_v", rop)
    if counts is None:
        raise TypeError("reduce_scatter_v: counts is required (the rows each rank receives)")
    g = _group(group)
    b = g._backend
    src = _rows(ad.array)
    given = _counts(counts, b.size)

    def run() -> Any:
        p, me = b.size, b.rank
        table = _table(g, Op.REDUCE_SCATTER_V, src, given)
        every = _counts_of(table, 3, p)
        c = given[1]
        differ = [r for r, (_, theirs) in enumerate(every) if theirs != c]
        if differ:
            raise MismatchError(
                "reduce_scatter_v: the ranks passed different counts ("
                + "; ".join(f"rank {r}: {theirs}" for r, (_, theirs) in enumerate(every))
                + "); every rank must pass the same counts")
        total = sum(c)
        short = [r for r in range(p) if int(table[r, 0]) != total]
        if short:
            raise MismatchError(
                f"reduce_scatter_v: counts {c} add up to {total} rows, but rank"
                f"{'s' if len(short) > 1 else ''} {', '.join(map(str, short))} brought "
                f"{', '.join(str(int(table[r, 0])) for r in short)}; every rank passes "
                "sum(counts) rows")
        m = max(c)
        out = np.empty((m,) + src.shape[1:], dtype=src.dtype)
        if m:
            whole = src if all(n == m for n in c) else _padded(
                src, list(zip(_offsets(c)[:-1], c)), m)
            b.reduce_scatter(whole, out, rop)
        mine = out[:c[me]]
        if rop is ReduceOp.AVG:
            np.divide(mine, p, out=mine)
        return ad.wrap(np.ascontiguousarray(mine))
    return _call(g, "reduce_scatter_v", run, async_op, (src,))


def all_to_all_v(x: Any, send_counts: Sequence[int], recv_counts: Sequence[int] | None = None,
                 *, group: Group | None = None, stream: object = None,
                 async_op: bool = False) -> Any | Work:
    """Send block j of `x` (send_counts[j] rows, blocks in rank order along axis 0) to rank j
    and return the blocks received, in rank order. `recv_counts[i]` (or None to learn them in
    the call) is the number of rows rank i sends here; where what rank i sends rank j and
    what rank j expects differ, every rank raises MismatchError."""
    if type(x) is not _ndarray:
        if (r := _fw("all_to_all_v", x, (send_counts, recv_counts), group, stream,
                     async_op)) is not NotImplemented:
            return r
    ad = adapt(x)
    check_dtype(ad.array.dtype, "all_to_all_v")
    if send_counts is None:
        raise TypeError("all_to_all_v: send_counts is required (the rows sent to each rank)")
    g = _group(group)
    b = g._backend
    src = _rows(ad.array)
    sending, expecting = _counts(send_counts, b.size), _counts(recv_counts, b.size)

    def run() -> Any:
        p, me = b.size, b.rank
        table = _table(g, Op.ALL_TO_ALL_V, src, sending, expecting)
        sends = [c for _, c in _counts_of(table, 3, p)]
        for r, (status, c) in enumerate(_counts_of(table, 4 + p, p)):
            if status == _GIVEN and c != [sends[i][r] for i in range(p)]:
                raise MismatchError(
                    f"all_to_all_v: rank {r} expects {c} rows from ranks 0..{p - 1}, but they "
                    f"send it {[sends[i][r] for i in range(p)]}; recv_counts[i] on rank j must "
                    "be send_counts[j] on rank i")
        wrong = [r for r in range(p) if sum(sends[r]) != int(table[r, 0])]
        if wrong:
            raise MismatchError(
                "all_to_all_v: " + "; ".join(
                    f"rank {r} sends {sum(sends[r])} rows in all but brought {int(table[r, 0])}"
                    for r in wrong) + "; x must have sum(send_counts) rows")
        m = max(max(c) for c in sends)
        got = [sends[i][me] for i in range(p)]
        if m == 0:
            return ad.wrap(np.empty((0,) + src.shape[1:], dtype=src.dtype))
        mine = sends[me]
        whole = src if all(n == m for c in sends for n in c) else _padded(
            src, list(zip(_offsets(mine)[:-1], mine)), m)
        out = np.empty((p * m,) + src.shape[1:], dtype=src.dtype)
        b.all_to_all(whole, out)
        if all(n == m for n in got):
            return ad.wrap(out)
        return ad.wrap(np.concatenate([out[i * m:i * m + n] for i, n in enumerate(got)]))
    return _call(g, "all_to_all_v", run, async_op, (src,))


register(all_gather_v, reduce_scatter_v, all_to_all_v)
