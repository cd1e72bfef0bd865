"""ringcomm for MLX programs: differentiable collectives and a drop-in for mx.distributed.

    import ringcomm.mlx
    ringcomm.mlx.install()          # mx.distributed.* now runs on ringcomm, for this program

`install()` is the one explicit call that routes `mx.distributed` to ringcomm: it replaces the
functions of the module `mlx.core.distributed` (init, is_available, Group, all_sum, all_max,
all_min, all_gather, sum_scatter, send, recv, recv_like) with those of
`ringcomm.mlx.distributed`. MLX's own Python code (mlx.nn.layers.distributed: shard_linear,
shard_inplace, AllToShardedLinear, ShardedToAllLinear, the quantized sharded layers,
fully_shard; mlx.nn.utils.average_gradients and clip_grad_norm_sharded) and mlx-lm look those
functions up on the module when they run (`mx.distributed.all_sum(...)`), so they run on
ringcomm unchanged. A name imported before install() (`from mlx.core.distributed import
all_sum`) keeps MLX's function: call install() first, at the top of the program.

`ringcomm.all_sum(x)` and every other ringcomm call on an MLX array is differentiable too (see
`ringcomm.mlx.autodiff`), installed or not.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import distributed

__all__ = ["distributed", "install", "installed", "uninstall"]

_NAMES = ("init", "is_available", "Group", "all_sum", "all_max", "all_min", "all_gather",
          "sum_scatter", "send", "recv", "recv_like")
_saved: dict[str, Any] = {}


def _target() -> ModuleType:
    import mlx.core as mx

    return mx.distributed


def install() -> None:
    """Route `mx.distributed` to ringcomm for this program (idempotent; `uninstall()` undoes)."""
    target = _target()
    if _saved:
        return
    for name in _NAMES:
        _saved[name] = getattr(target, name)
        setattr(target, name, getattr(distributed, name))


def uninstall() -> None:
    """Give `mx.distributed` back its own functions."""
    target = _target()
    for name, fn in _saved.items():
        setattr(target, name, fn)
    _saved.clear()


def installed() -> bool:
    """Return whether `mx.distributed` is routed to ringcomm."""
    return bool(_saved)
