"""The ring backend: TCP between hosts, shared memory inside one; needs nothing but NumPy.

`create` reads the launcher's environment (the rank and the rank hostfile,
see `ringcomm.environment`, or a rendezvous) and the job's key (`jobkey`), and
builds this process's world group (`backend.RingBackend`, a composition: its
links, the shared-memory set-up, one algorithm per file under `algorithms/`,
the choice between them in `choose.py`, send/recv in `p2p.py`).
"""

from __future__ import annotations

import atexit
import logging
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ... import environment
from ...errors import InitError
from ...transport.net import parse_address
from . import jobkey

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
    deadline = time.monotonic() + timeout
    with open(found.hostfile, "rb") as f:
        identity = b"hostfile:" + f.read()
    first = parse_address(hosts[0][0])
    key, keys = jobkey.from_environment(
        environ, rank, identity, "the rank hostfile", deadline,
        lambda secret: jobkey.probe(first, secret, rank, deadline, "rank 0"))
    if keys is not None:  # rank 0: the others have read it once they connected; at the latest
        atexit.register(keys.remove)  # it goes with this process
    return backend.create(rank, hosts, key.secret, timeout, stall, shared_memory=shared,
                          authenticated=key.authenticated)


def _create_by_rendezvous(meeting: environment.Rendezvous, environ: Mapping[str, str],
                          timeout: float, stall: float, shared: bool) -> RingBackend:
    from . import backend, rendezvous

    deadline = time.monotonic() + timeout
    identity = f"rendezvous:{meeting.source}:{meeting.job}:{meeting.host}:{meeting.port}:" \
        f"{meeting.size}".encode()
    key, keys = jobkey.from_environment(
        environ, meeting.rank, identity, f"the {meeting.source} job's variables", deadline,
        lambda secret: jobkey.probe(rendezvous.address(meeting), secret, meeting.rank, deadline,
                                    f"rank 0's {meeting.source} rendezvous"))
    try:
        table, listener = rendezvous.meet(meeting, key.secret, deadline, socket.gethostname())
    finally:
        if keys is not None:
            keys.remove()  # every rank that reported has the key; the rest never will
    log.debug("rank %d of %d met at %s; hosts %s", meeting.rank, meeting.size,
              meeting.describe(), table.hosts)
    return backend.create(meeting.rank, table.addresses, key.secret, timeout, stall,
                          listeners=[listener], host_names=table.hosts, shared_memory=shared,
                          authenticated=key.authenticated)
