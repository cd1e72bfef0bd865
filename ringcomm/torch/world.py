"""How ringcomm's world is formed under torch.distributed.

torch calls the backend's creator once per process group, on the group's members, with
torch's store (a PrefixStore over the store of `init_process_group`), the group's rank and
size, and the timeout. ringcomm's world is formed once, by the default group's creator:

1. A world that already exists (the program called `ringcomm.init()` first) is used.
2. A launcher that numbers ringcomm's ranks (``ringcomm launch``, ``mlx.launch``, mpirun)
   forms it from its own environment (`ringcomm.init`).
3. Otherwise (torchrun, a hand-set MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE, Slurm with torch's
   variables, ``tcp://``, ``file://``, a store passed in) the ranks meet through torch's own
   store: every rank listens for the ring on the address that routes towards the store's host,
   writes that address and its host name into the store, and reads everyone's. No second port
   is agreed on and nothing runs beside torch's rendezvous.

The job's key (what every ring connection proves): RINGCOMM_TOKEN when set; else
RINGCOMM_UNAUTHENTICATED=1 as ringcomm allows it; else rank 0 draws a fresh secret and hands
it to the others through torch's store. torch's store is itself unauthenticated (whoever
reaches it can already steer the torch job), so the ring is then as private as the store.

Under ``ringcomm launch`` or a bare Slurm step (``srun python train.py``) there are no torch
variables, and torch's ``env://`` would fail for want of MASTER_ADDR. `env_handler` wraps
torch's env:// handler: where torch's variables are missing and a ringcomm launcher numbered the
ranks (or a Slurm step, whose ranks ringcomm meets at its first node), it forms ringcomm's world
and serves torch a TCPStore on rank 0 (its port handed out by a ringcomm broadcast). Where
torch's variables are set, torch's handler runs unchanged.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist

from .. import environment
from .. import group as groups
from ..backends.mpi import detect as mpi_detect
from ..errors import InitError

__all__ = ["default_world", "env_handler", "launched_by_ringcomm"]

_KEY = "ringcomm/"


def launched_by_ringcomm(environ: Any = None) -> bool:
    """Return whether ringcomm forms its world from the environment alone: a launcher numbered
    its ranks (ringcomm's, MLX's, an MPI one), or a Slurm step (srun) it meets through."""
    environ = os.environ if environ is None else environ
    if environment.ring_launch(environ).launched or environ.get(environment.BACKEND):
        return True
    return (mpi_detect.launched_size(environ, slurm=False) or 0) > 1 or _slurm_step(environ)


def _slurm_step(environ: Any) -> Any:
    """Return the rendezvous of a Slurm step (srun) without torch's variables, or None."""
    try:
        found = environment.rendezvous(environ)
    except ValueError:
        return None
    return found if found is not None and found.source == "slurm" else None


def _seconds(timeout: datetime.timedelta | float | None) -> float | None:
    if timeout is None:
        return None
    return timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else float(timeout)


def default_world(store: dist.Store, rank: int, size: int, timeout: float) -> groups.Group:
    """Return ringcomm's world for torch's default group of `size` ranks (this one is `rank`)."""
    world = groups._world
    if world is None:
        if launched_by_ringcomm():
            world = groups.init(timeout=timeout)
        else:
            world = _meet_through_store(store, rank, size, timeout)
    if (world.rank(), world.size()) != (rank, size):
        raise InitError(
            f"ringcomm's world has this process as rank {world.rank()} of {world.size()}, torch "
            f"as rank {rank} of {size}; the two must agree: start the job with one launcher "
            "(ringcomm launch, torchrun or mpirun) and let torch read its ranks from it")
    return world


# -- meeting through torch's store ----------------------------------------------------------


def _stores(store: Any) -> Iterator[Any]:
    while store is not None:
        yield store
        store = getattr(store, "underlying_store", None)


def _store_host(store: dist.Store) -> str | None:
    """Return the host of the TCPStore below `store`, else MASTER_ADDR, else None."""
    for s in _stores(store):
        if isinstance(s, dist.TCPStore):
            return str(s.host)
    return os.environ.get("MASTER_ADDR")


def _install(backend: Any) -> groups.Group:
    with groups._lock:
        if groups._world is not None:  # formed meanwhile by another thread: keep the first
            backend.close()
            return groups._world
        groups._world = groups.Group(backend)
        return groups._world


def _meet_through_store(store: dist.Store, rank: int, size: int,
                        timeout: float) -> groups.Group:
    from ..backends.ring import backend as ring
    from ..backends.ring.rendezvous import local_address_towards
    from ..transport.net import Address, listen

    environ = os.environ
    if size == 1:
        return groups.init(timeout=timeout)
    try:
        stall = environment.stall_seconds(environ)
        shared = environment.transport(environ) == "auto"
    except ValueError as e:
        raise InitError(str(e)) from None
    towards = _store_host(store)
    ip = local_address_towards(towards) if towards else "127.0.0.1"
    listener = listen(Address(ip, 0))
    host = socket.gethostname()
    try:
        store.set(f"{_KEY}rank{rank}", json.dumps(
            {"address": environment.format_address(ip, listener.getsockname()[1]),
             "host": host, "size": size}))
        token = environ.get(environment.TOKEN)
        if token:
            secret, authenticated = token.encode(), True
        elif environment.unauthenticated(environ):
            secret, authenticated = b"ringcomm-open:torch-store", False
        else:
            if rank == 0:
                store.set(f"{_KEY}key", secrets.token_hex(32))
            secret, authenticated = _get(store, f"{_KEY}key", timeout, rank).encode(), True
        reports = [json.loads(_get(store, f"{_KEY}rank{r}", timeout, rank))
                   for r in range(size)]
    except BaseException:
        listener.close()
        raise
    bad = [r for r, got in enumerate(reports) if got.get("size") != size]
    if bad:
        listener.close()
        raise InitError(f"rank(s) {bad} report another world size than {size}; every rank must "
                        "pass the same world_size to init_process_group")
    addresses = [[str(got["address"])] for got in reports]
    hosts = [str(got["host"]) for got in reports]
    if towards is None and len(set(hosts)) > 1:
        listener.close()
        raise InitError(
            "ringcomm cannot form its ring across hosts from this store: it is no TCPStore and "
            "MASTER_ADDR is not set, so no rank knows which address the others reach it at; "
            "use init_method='tcp://host:port' or env:// (torchrun), or set MASTER_ADDR to an "
            "address of rank 0's host")
    backend = ring.create(rank, addresses, secret, timeout, stall, listeners=[listener],
                          host_names=hosts, shared_memory=shared, authenticated=authenticated)
    return _install(backend)


def _get(store: dist.Store, key: str, timeout: float, rank: int) -> str:
    """Return the store's value of `key`, waiting at most `timeout` s; InitError naming it."""
    try:
        store.wait([key], datetime.timedelta(seconds=timeout))
        return bytes(store.get(key)).decode()
    except (RuntimeError, dist.DistError) as e:
        who = key[len(_KEY):]
        what = f"{who} never wrote its ring address" if who.startswith("rank") else \
            "rank 0 never handed out the job's key"
        raise InitError(f"rank {rank}: ringcomm's meeting through torch's store timed out after "
                        f"{timeout:g} s: {what} ({e})") from None


# -- env:// under ringcomm's launcher ---------------------------------------------------------

_TORCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
_torch_env_handler: Any = None
_handler_lock = threading.Lock()


def env_handler(url: str, timeout: datetime.timedelta = dist.default_pg_timeout,
                **kwargs: Any) -> Iterator[tuple[dist.Store, int, int]]:
    """torch's env:// handler, or, under a ringcomm launcher without torch's variables, a store
    served by rank 0 of ringcomm's world (every rank, the ranks and the size from ringcomm)."""
    assert _torch_env_handler is not None
    if all(v in os.environ for v in _TORCH_VARS) or not launched_by_ringcomm():
        return _torch_env_handler(url, timeout=timeout, **kwargs)
    return _ringcomm_store(timeout)


def _ringcomm_store(timeout: datetime.timedelta) -> Iterator[tuple[dist.Store, int, int]]:
    from .. import ops

    seconds = _seconds(timeout) or environment.timeout(os.environ)
    world = groups._world or groups.init(timeout=seconds)
    rank, size = world.rank(), world.size()
    where = np.zeros(256, dtype=np.uint8)
    store: dist.TCPStore | None = None
    if rank == 0:
        host = _rank0_host()
        store = dist.TCPStore(host, 0, size, True, timeout, wait_for_workers=False)
        text = environment.format_address(host, store.port).encode()
        where[:len(text)] = np.frombuffer(text, dtype=np.uint8)
    where = ops.broadcast(where, 0, group=world)
    if store is None:
        host, port = environment.parse_address(bytes(where).rstrip(b"\0").decode())
        store = dist.TCPStore(host, port, size, False, timeout)
    yield store, rank, size
    raise RuntimeError("unable to perform re-rendezvous using the ringcomm launcher's env://")


def _rank0_host() -> str:
    """Return the address the other ranks reach this one (rank 0) at."""
    found = environment.ring_launch(os.environ)
    if found.hostfile:
        try:
            first = environment.read_rank_hostfile(found.hostfile)[0][0]
            return environment.parse_address(first)[0]
        except (environment.RankHostfileError, ValueError, IndexError):
            pass
    step = _slurm_step(os.environ)
    if step is not None:  # a Slurm step: its first node, by the name the ring met at
        return str(step.host)
    try:  # another launcher (mpirun): this host's name, if it resolves
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def install_env_handler() -> None:
    """Put `env_handler` in front of torch's env:// handler, once."""
    global _torch_env_handler
    rdzv = importlib.import_module("torch.distributed.rendezvous")  # the module, not dist's function

    with _handler_lock:
        current = rdzv._rendezvous_handlers.get("env")
        if current is env_handler or current is None:
            return
        _torch_env_handler = current
        rdzv._rendezvous_handlers["env"] = env_handler
