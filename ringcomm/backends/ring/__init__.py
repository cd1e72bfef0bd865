"""The TCP ring backend: needs nothing but NumPy and sockets.

`create` reads the launcher's environment (the rank and the rank hostfile,
see `ringcomm.environment`) and builds this process's world group; the
algorithms live in `backend.py` and `pipeline.py`.
"""

from __future__ import annotations

import hashlib
import logging
import socket
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
    """Return this process's world group from a ring launcher's environment or a rendezvous."""
    from . import backend

    try:
        stall = environment.stall_seconds(environ)
        shared = environment.transport(environ) == "auto"
        found = environment.ring_launch(environ)
        meeting = None if found.launched else environment.rendezvous(environ)
    except ValueError as e:
        raise InitError(str(e)) from None
    if meeting is not None:
        return _create_by_rendezvous(meeting, environ, timeout, stall, shared)
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
    token = environ.get(environment.TOKEN)
    if token:
        key = token.encode()
    else:  # a program started by another launcher: the hostfile is the shared secret
        with open(found.hostfile, "rb") as f:
            key = _derived_key(b"ringcomm-hostfile:" + f.read(), rank, "the hostfile")
    return backend.create(rank, hosts, key, timeout, stall, shared_memory=shared)


def _derived_key(secret: bytes, rank: int, source: str) -> bytes:
    """Return the key derived from what every rank knows, warning (on rank 0) that it is weak."""
    if rank == 0:
        log.warning(
            "ringcomm: %s is not set, so connections are authenticated with a key derived from "
            "%s, which other users of these hosts can learn (the hostfile's ports show in "
            "ss -tln; an engine's job id in its listings). Give every rank the same secret, "
            "e.g. --env %s=<secret> (ringcomm launch sets one itself). Traffic is not "
            "encrypted either way.", environment.TOKEN, source, environment.TOKEN)
    return hashlib.sha256(secret).digest()


def _create_by_rendezvous(meeting: environment.Rendezvous, environ: Mapping[str, str],
                          timeout: float, stall: float, shared: bool) -> RingBackend:
    from . import backend, rendezvous

    token = environ.get(environment.TOKEN)
    key = token.encode() if token else _derived_key(
        b"ringcomm-rendezvous:" + meeting.job.encode(), meeting.rank,
        f"the {meeting.source} job's id")
    table, listener = rendezvous.meet(meeting, key, timeout, socket.gethostname())
    log.debug("rank %d of %d met at %s; hosts %s", meeting.rank, meeting.size,
              meeting.describe(), table.hosts)
    return backend.create(meeting.rank, table.addresses, key, timeout, stall,
                          listeners=[listener], host_names=table.hosts, shared_memory=shared)
