"""The TCP ring backend: needs nothing but NumPy and sockets.

`create` reads the launcher's environment (the rank and the rank hostfile,
see `ringcomm.environment`) and builds this process's world group; the
algorithms live in `backend.py` and `pipeline.py`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ... import environment
from ...errors import InitError

if TYPE_CHECKING:
    from .backend import RingBackend

__all__ = ["create", "is_available"]

log = logging.getLogger("ringcomm")


def is_available() -> bool:
    """Return True: the ring needs only NumPy and sockets."""
    return True


def create(environ: Mapping[str, str], timeout: float) -> RingBackend:
    """Return this process's world group from the ring launcher's environment."""
    from . import backend

    found = environment.ring_launch(environ)
    if found.missing:
        raise InitError(f"ring backend: missing environment variable(s) {', '.join(found.missing)}")
    assert found.rank is not None and found.hostfile is not None
    try:
        hosts = environment.read_rank_hostfile(found.hostfile)
    except environment.RankHostfileError as e:
        raise InitError(str(e)) from None
    try:
        rank = int(found.rank)
    except ValueError:
        raise InitError(f"rank must be an integer, got {found.rank!r}") from None
    if not 0 <= rank < len(hosts):
        raise InitError(f"rank {rank} is out of range for a hostfile of {len(hosts)} entries")
    try:
        stall = environment.stall_seconds(environ)
    except ValueError as e:
        raise InitError(str(e)) from None
    token = environ.get(environment.TOKEN)
    if token:
        key = token.encode()
    else:  # a program started by another launcher: the hostfile is the shared secret
        with open(found.hostfile, "rb") as f:
            key = hashlib.sha256(b"ringcomm-hostfile:" + f.read()).digest()
        if rank == 0:
            log.warning(
                "ringcomm: %s is not set, so connections are authenticated with a key derived "
                "from the hostfile, which any user of these hosts can rebuild from the listening "
                "ports (ss -tln). Give every rank a secret token, e.g. mlx.launch --env "
                "%s=<secret> (ringcomm launch sets one itself). Traffic is not encrypted either "
                "way.", environment.TOKEN, environment.TOKEN)
    return backend.create(rank, hosts, key, timeout, stall)
