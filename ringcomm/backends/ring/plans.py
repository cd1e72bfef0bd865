"""One bounded cache for the plans of the fast paths.

A plan holds what every call of one kind (op, dtype, shape; for send/recv also the peer)
needs and can make once: the header template, the views, the buffers. A repeated call
builds no signature, packs no header, makes no view. A kind the fast path does not take
is cached too, as None, so that it is decided once. A program of more kinds than LIMIT
starts again from an empty cache rather than growing without bound.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["LIMIT", "Plans"]

LIMIT = 256
P = TypeVar("P")


class Plans(dict[Any, P]):
    """Plans by kind; `get(key, Plans.MISSING)` on the hot path, `add` on a miss."""

    MISSING: Any = object()

    def add(self, key: Any, plan: P) -> P:
        """Keep `plan` for `key` (None: that kind takes the general path); return it."""
        if len(self) >= LIMIT:
            self.clear()
        self[key] = plan
        return plan
