"""Distributed communication for Python arrays.

    import numpy as np, ringcomm
    world = ringcomm.init()
    x = ringcomm.all_sum(np.ones(10))

Run it on N local processes with ``ringcomm launch -n N script.py``.
"""

import sys as _sys

# Shared counters are 8-byte words that a 32-bit process reads in two halves (torn), and the
# kernel's timeouts are set with a 64-bit layout: a 32-bit Python is refused, not miscounted.
if _sys.maxsize < 2**63 - 1:
    raise ImportError("ringcomm needs a 64-bit Python (this one is 32-bit): its shared-memory "
                      "counters are 8-byte words that a 32-bit process cannot read whole")

from .errors import (
    CommTimeoutError,
    ConnectError,
    InitError,
    MismatchError,
    PeerAbortedError,
    PeerError,
    RingcommError,
)
from .group import Group, Work, init, is_available, new_group
from .objects import all_gather_object, broadcast_object, recv_object, send_object
from .ops import (
    all_gather,
    all_max,
    all_min,
    all_reduce,
    all_sum,
    all_to_all,
    barrier,
    broadcast,
    gather,
    recv,
    recv_like,
    reduce_scatter,
    scatter,
    send,
    sum_scatter,
)
from .signature import ReduceOp
from .training import (
    GradientReducer,
    average_gradients,
    tree_flatten,
    tree_map,
    tree_unflatten,
)
from .uneven import all_gather_v, all_to_all_v, reduce_scatter_v


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ringcomm")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Group", "Work", "init", "is_available", "new_group",
    "all_sum", "all_max", "all_min", "all_reduce", "ReduceOp", "all_gather", "sum_scatter",
    "reduce_scatter", "all_gather_v", "reduce_scatter_v", "all_to_all_v",
    "send", "recv", "recv_like", "broadcast", "barrier",
    "all_to_all", "gather", "scatter",
    "all_gather_object", "broadcast_object", "send_object", "recv_object",
    "tree_map", "tree_flatten", "tree_unflatten", "average_gradients", "GradientReducer",
    "RingcommError", "InitError", "ConnectError", "PeerError", "PeerAbortedError",
    "CommTimeoutError", "MismatchError",
    "__version__",
]
