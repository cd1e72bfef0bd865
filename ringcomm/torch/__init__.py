"""ringcomm as a torch.distributed backend.

    import torch.distributed as dist
    import ringcomm.torch  # registers the "ringcomm" backend

    dist.init_process_group("ringcomm")

The import is explicit on purpose. torch loads third-party code at every ``import torch``
through the ``torch.backends`` entry-point group, which is meant for device extensions: a
communication library in it would be imported by every program that imports torch, and a
failure there breaks ``import torch`` itself. One import line where the program chooses
ringcomm costs nothing elsewhere.

Importing this package registers the backend (``Backend.register_backend("ringcomm", ...,
extended_api=True, devices=["cpu"])``) and lets torch's ``env://`` run under ``ringcomm
launch`` (see `world`); nothing else is imported until a group is created. The creator forms
ringcomm's world for the default group (`world.default_world`) and maps every later group,
made by its members only, to ``ringcomm.new_group(ranks, tag=group_name)``.
"""

from __future__ import annotations

import datetime
import os
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

if TYPE_CHECKING:
    from .backend import ProcessGroupRingcomm

__all__ = ["BACKEND", "monitored_barrier", "process_group"]

BACKEND = "ringcomm"


def _seconds(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, datetime.timedelta):
        return timeout.total_seconds()
    return float(timeout)


def _create(opts: Any, backend_options: Any = None) -> ProcessGroupRingcomm:
    """torch's creator: the process group of `opts.global_ranks_in_group` (empty: the world)."""
    from .. import environment
    from .. import group as groups
    from ..errors import InitError
    from .backend import ProcessGroupRingcomm

    rank, size = int(opts.group_rank), int(opts.group_size)
    timeout = _seconds(opts.timeout) or environment.timeout(os.environ)
    ranks = [int(r) for r in opts.global_ranks_in_group]
    from . import world

    if not ranks:
        g = world.default_world(opts.store, rank, size, timeout)
    else:
        if groups._world is None:
            raise InitError(
                f"ringcomm: a group of ranks {ranks} was asked for, but ringcomm's world was "
                "never formed: make ringcomm the default group's backend "
                "(init_process_group('ringcomm')), or start the job with ringcomm launch")
        g = groups._world.new_group(ranks, tag=str(opts.group_id))
    if (g.rank(), g.size()) != (rank, size):
        raise InitError(f"ringcomm: torch's group {opts.group_id!r} has this process as rank "
                        f"{rank} of {size}, ringcomm's as rank {g.rank()} of {g.size()}")
    return ProcessGroupRingcomm(g, rank, size, opts.store, timeout)


def process_group(group: Any = None) -> ProcessGroupRingcomm:
    """Return torch's `group` (default: the default group) as the ringcomm process group."""
    from .backend import ProcessGroupRingcomm

    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    if not isinstance(pg, ProcessGroupRingcomm):
        raise ValueError(f"not a ringcomm process group: {pg!r} (backend "
                         f"{dist.get_backend(pg)!r})")
    return pg


def monitored_barrier(group: Any = None, timeout: Any = None,
                      wait_all_ranks: bool = False) -> None:
    """torch's monitored_barrier for ringcomm groups: return once every rank arrived, else
    raise DistBackendError naming the ranks that did not within `timeout` (default: the
    group's). torch's own dist.monitored_barrier refuses every backend but gloo."""
    process_group(group).monitored_barrier(timeout, wait_all_ranks)


def _register() -> None:
    # A torch built without distributed support still gets ringcomm's differentiable
    # collectives (ringcomm.torch.autograd, which imports this package); only the backend
    # needs torch.distributed.
    if not dist.is_available():
        return
    from . import world

    if BACKEND.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND, _create, extended_api=True, devices=["cpu"])
    world.install_env_handler()


_register()
