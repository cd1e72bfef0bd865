"""NumPy views of torch CPU tensors, and the checks torch's collectives need.

A collective runs on a C-contiguous NumPy view of the caller's tensor where there is one
(`t.numpy()`: no copy), so results land in the caller's tensor as torch's in-place
semantics require. A tensor without such a view (non-contiguous, a conjugate or negative
view) gets a contiguous copy, and the result is copied back into it after the call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..arrays import bfloat16

__all__ = ["Staged", "check", "flat", "plain", "readable", "view"]

_BF16 = torch.bfloat16


def check(op: str, t: object) -> torch.Tensor:
    """Return `t` if it is a dense CPU tensor, else raise saying what ringcomm needs."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"ringcomm {op}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise ValueError(f"ringcomm {op}: tensors must be on the CPU, got one on {t.device}; "
                         "ringcomm's torch backend is CPU-only (use nccl for CUDA tensors, e.g. "
                         "init_process_group('cpu:ringcomm,cuda:nccl') is not supported either: "
                         "move the tensor with .cpu())")
    if t.layout is not torch.strided:
        raise ValueError(f"ringcomm {op}: {t.layout} tensors are not supported; pass a dense "
                         "tensor (.to_dense())")
    return t


def plain(t: torch.Tensor) -> bool:
    """Return whether `t` has a C-contiguous NumPy view that writes through to it."""
    return t.is_contiguous() and not t.is_conj() and not t.is_neg()


def view(t: torch.Tensor) -> np.ndarray:
    """Return the NumPy view of contiguous CPU tensor `t` (bfloat16 as ml_dtypes.bfloat16)."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype is _BF16:
        if bfloat16 is None:
            raise TypeError("ringcomm: bfloat16 tensors need ml_dtypes; pip install ml_dtypes")
        return t.view(torch.int16).numpy().view(bfloat16)
    try:
        return t.numpy()
    except TypeError as e:
        raise TypeError(f"ringcomm: torch dtype {t.dtype} has no NumPy equivalent; cast it "
                        "first") from e


def readable(t: torch.Tensor) -> np.ndarray:
    """Return a flat C-contiguous NumPy array of `t`'s values: its view where it has one, else
    a copy (for inputs a call only reads)."""
    return view(t.resolve_conj().resolve_neg().reshape(-1).contiguous())


class Staged:
    """A tensor the call reads or writes through a NumPy array: its own view where it has one,
    else a contiguous copy (`copy_in`: holding its values) that `finish` writes back."""

    __slots__ = ("tensor", "work", "array")

    def __init__(self, t: torch.Tensor, copy_in: bool = True) -> None:
        self.tensor = t
        if plain(t):
            self.work = t
        else:
            src = t.resolve_conj().resolve_neg()
            self.work = src.contiguous() if copy_in else torch.empty(
                t.shape, dtype=t.dtype)
        self.array = view(self.work)

    def finish(self) -> None:
        """Write the result back into the caller's tensor, where it was staged in a copy."""
        if self.work is not self.tensor:
            with torch.no_grad():
                self.tensor.copy_(self.work)


def flat(tensors: Sequence[torch.Tensor], copy_in: bool) -> tuple[np.ndarray, Callable[[], None]]:
    """Return one contiguous 1-D array over `tensors` (concatenated, as their common dtype)
    and the function that copies it back into them."""
    n = [t.numel() for t in tensors]
    buf = torch.empty(sum(n), dtype=tensors[0].dtype)
    if copy_in:
        torch.cat([t.reshape(-1).resolve_conj().resolve_neg() for t in tensors], out=buf)

    def back() -> None:
        with torch.no_grad():
            start = 0
            for t, k in zip(tensors, n):
                t.copy_(buf[start:start + k].view(t.shape))
                start += k
    return view(buf), back
