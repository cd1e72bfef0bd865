"""torch's reduce ops as ringcomm reduces them: the op, PREMUL_SUM's factor, AVG's divisor.

torch names nine reduce ops; ringcomm reduces eight of them by its own ReduceOp. PREMUL_SUM
multiplies each rank's contribution by a factor first (read from the op, `opts.reduceOp.factor`)
and sums. AVG is a sum divided by the group's size afterwards, on torch's side, so that every
dtype torch allows keeps torch's rounding. A dtype an op refuses raises before anything is sent,
on every rank alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..signature import ReduceOp
from .tensors import view

__all__ = ["SUM", "Reduction", "back_into", "reduction"]


def _code(name: str) -> int:
    """Return the number of torch's reduce op `name` (what opts.reduceOp.op.value gives)."""
    return int(getattr(dist.ReduceOp, name).value)


# torch's reduce op (its number) -> ringcomm's op, and what torch names it.
_OPS: dict[int, tuple[ReduceOp | None, str]] = {
    _code("SUM"): (ReduceOp.SUM, "SUM"),
    _code("AVG"): (ReduceOp.AVG, "AVG"),
    _code("PRODUCT"): (ReduceOp.PROD, "PRODUCT"),
    _code("MIN"): (ReduceOp.MIN, "MIN"),
    _code("MAX"): (ReduceOp.MAX, "MAX"),
    _code("BAND"): (ReduceOp.BAND, "BAND"),
    _code("BOR"): (ReduceOp.BOR, "BOR"),
    _code("BXOR"): (ReduceOp.BXOR, "BXOR"),
    _code("PREMUL_SUM"): (None, "PREMUL_SUM"),
}
_PREMUL = _code("PREMUL_SUM")
_SUM = ReduceOp.SUM
_AVG = ReduceOp.AVG


# (op name, dtype) pairs checked once and accepted.
_ACCEPTED: set[tuple[str, torch.dtype]] = set()


class Reduction:
    """How one call reduces: ringcomm's op, the factor of PREMUL_SUM, the divisor of AVG."""

    __slots__ = ("op", "factor", "average", "name")

    def __init__(self, op: ReduceOp, name: str, factor: Any = None, average: bool = False):
        self.op, self.name, self.factor, self.average = op, name, factor, average

    def check(self, call: str, t: torch.Tensor) -> None:
        """Raise (before anything is sent, so on every rank alike) if this op refuses t's dtype."""
        if (self.name, t.dtype) in _ACCEPTED:
            return
        floating = t.is_floating_point() or t.is_complex()
        if (self.average or self.factor is not None) and not floating:
            raise TypeError(f"ringcomm {call}: ReduceOp.{self.name} needs floating or complex "
                            f"tensors, got {t.dtype}; cast first, or sum and divide")
        why = self.op.refuses(view(torch.empty(0, dtype=t.dtype)).dtype)
        if why is not None and not self.average:
            raise TypeError(f"ringcomm {call}: ReduceOp.{self.name} on {t.dtype} tensors: {why}")
        _ACCEPTED.add((self.name, t.dtype))

    def prepare(self, t: torch.Tensor) -> torch.Tensor:
        """Return what this rank contributes: `t`, or t times PREMUL_SUM's factor (a copy)."""
        return t if self.factor is None else t * self.factor

    def finish(self, t: torch.Tensor, size: int) -> None:
        """Turn the sum in `t` into the average (AVG), in place."""
        if self.average:
            t.div_(size)


_BY_CODE = {k: Reduction(op, name) for k, (op, name) in _OPS.items() if op is not None
          and op is not _AVG}
_BY_CODE[_code("AVG")] = Reduction(_SUM, "AVG", average=True)


SUM = _BY_CODE[_code("SUM")]  # the op of a call made without options


def reduction(opts: Any) -> Reduction:
    red = opts.reduceOp
    key = red.op.value
    found = _BY_CODE.get(key)
    if found is not None:
        return found
    if key == _PREMUL:
        factor = red.factor
        if isinstance(factor, torch.Tensor):
            if factor.numel() != 1:
                raise ValueError(f"ringcomm: PREMUL_SUM's factor must be one number, got a "
                                 f"tensor of shape {tuple(factor.shape)}")
            factor = factor.item()
        return Reduction(_SUM, "PREMUL_SUM", factor=factor)
    raise ValueError(f"ringcomm: unsupported reduce op {red.op!r}")




def back_into(tensors: list[torch.Tensor], buf: np.ndarray, back: Callable[[], None],
              red: Reduction, size: int) -> None:
    """Copy a packed reduction back into `tensors`, averaged where the op is AVG."""
    back()
    for t in tensors:
        red.finish(t, size)
