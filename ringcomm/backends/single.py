"""The size-1 group: every collective is the identity, and nothing is sent."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..signature import ReduceOp
from .base import Backend


class SingleBackend(Backend):
    """A group of one process."""

    name = "single"

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        if out is not src:
            np.copyto(out, src)

    def all_gather(self, buf: np.ndarray, out: np.ndarray) -> None:
        out[...] = buf.reshape(out.shape)

    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        out[...] = buf.reshape(out.shape)

    def send(self, buf: np.ndarray, dst: int) -> None:
        raise ValueError(f"send: a group of size 1 has no rank {dst}")

    def recv(self, out: np.ndarray, src: int) -> None:
        raise ValueError(f"recv: a group of size 1 has no rank {src}")

    def broadcast(self, buf: np.ndarray, root: int) -> None:
        pass

    def barrier(self) -> None:
        pass

    def split(self, color: int, key: int) -> Backend:
        return SingleBackend()

    def subgroup(self, ranks: list[int], tag: str) -> Backend:
        return SingleBackend()


def create(environ: Mapping[str, str], timeout: float) -> SingleBackend:
    """Return the group of this process alone (the registry's factory)."""
    return SingleBackend()


def is_available() -> bool:
    """Return True: a group of one needs nothing."""
    return True
