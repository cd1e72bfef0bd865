"""Rank-order reduction of rows, and the even split of a range."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["even", "reduce_rows"]


def reduce_rows(rows: Sequence[np.ndarray], out: np.ndarray, ufunc: Callable) -> None:
    """Reduce `rows` (two or more) into `out` in rank order: out = r0 op r1 op r2 ...

    Every rank reduces in the same order, so every rank gets the same bits.
    """
    ufunc(rows[0], rows[1], out=out)
    for row in rows[2:]:
        ufunc(out, row, out=out)


def even(n: int, parts: int) -> list[tuple[int, int]]:
    """Return [0, n) cut into `parts` ranges whose sizes differ by at most one (larger first)."""
    q, r = divmod(n, parts)
    bounds = [i * q + min(i, r) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
