"""Meeting at rank 0 when an engine gives each rank only its number, the size and one address.

Under torchrun, a Kubernetes training operator or a Slurm step there is no
rank hostfile. Every rank opens its ring listener on a free port of the
address that reaches rank 0's host, then connects to rank 0's rendezvous
port and reports (rank, size, listening address, host). Rank 0 waits until
every rank has reported, checks the reports (each rank once, the same size
everywhere), and sends every rank the rank hostfile and which ranks share a
host. From there the job goes on exactly as when a launcher wrote the
hostfile. Connections are authenticated like every other ring connection
(the job's key: `jobkey`), and rank 0 listens on the address the others were
told, one thread running every handshake.

Every wait has the init deadline: an unreachable rank 0, a rank that never
arrives (named), a duplicate rank and a size mismatch are InitErrors, and
rank 0 tells every rank that reported why the job cannot start.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

from ... import environment
from ...errors import CommTimeoutError, ConnectError, InitError, RingcommError
from ...transport import handshake
from ...transport.handshake import Hello, Kind
from ...transport.net import Address, connect, describe_errno, listen

__all__ = ["RankTable", "address", "meet"]

log = logging.getLogger("ringcomm")
_LIMIT = 1 << 24
REPLY_GRACE = 2.0


@dataclass(frozen=True)
class RankTable:
    """What the rendezvous hands every rank: addresses and hosts, in rank order."""

    addresses: list[list[str]]
    hosts: list[str]


def _send(s: socket.socket, obj: object) -> None:
    body = json.dumps(obj).encode()
    s.sendall(len(body).to_bytes(4, "big") + body)


def _recv(s: socket.socket) -> dict:
    n = int.from_bytes(handshake.read_exact(s, 4), "big")
    if n > _LIMIT:
        raise ValueError(f"a rendezvous message of {n} bytes")
    value = json.loads(handshake.read_exact(s, n))
    if not isinstance(value, dict):
        raise ValueError("a rendezvous message that is not an object")
    return value


def local_address_towards(host: str) -> str:
    """Return this machine's address on the route to `host` (no packet is sent)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise InitError(f"cannot resolve the rendezvous host {host!r}: {e.strerror}; check "
                        "MASTER_ADDR (or the Slurm node list) and name resolution") from None
    target = str(infos[0][4][0])
    if target.startswith("127."):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((target, 9))
        except OSError as e:
            raise InitError(f"no route to the rendezvous host {host!r} ({target}): "
                            f"{describe_errno(e)}") from None
        return str(s.getsockname()[0])


def address(info: environment.Rendezvous) -> Address:
    """Return where rank 0's rendezvous listens."""
    return Address(info.host, info.port)


def meet(info: environment.Rendezvous, key: bytes, deadline: float,
         host_id: str) -> tuple[RankTable, socket.socket]:
    """Meet the other ranks by `deadline`; return the rank table and this rank's ring listener."""
    ip = local_address_towards(info.host)
    ring = listen(Address(ip, 0))
    mine = {"rank": info.rank, "size": info.size, "host": host_id,
            "address": environment.format_address(ip, ring.getsockname()[1])}
    try:
        table = _serve(info, key, deadline, mine) if info.rank == 0 else \
            _join(info, key, deadline, mine)
    except BaseException:
        ring.close()
        raise
    return table, ring


def _where(info: environment.Rendezvous) -> str:
    return f"{info.describe()} (port: {info.port_origin}; set {environment.RDZV_PORT} to change it)"


def _join(info: environment.Rendezvous, key: bytes, deadline: float, mine: dict) -> RankTable:
    addr = address(info)
    try:
        s = connect(addr, deadline, what=f"rank 0's {info.source} rendezvous")
    except ConnectError as e:
        raise InitError(f"rank {info.rank}: {e}; is rank 0 running, and is {_where(info)} "
                        "reachable from this host?") from None
    with s:
        try:
            handshake.client(s, key, Hello(Kind.RDZV, info.rank, 0), deadline)
            # Rank 0 answers at the shared deadline at the latest, with the table or why not:
            # a little longer here lets its reason arrive instead of a bare timeout.
            s.settimeout(max(0.1, deadline - time.monotonic()) + REPLY_GRACE)
            _send(s, mine)
            reply = _recv(s)
        except (TimeoutError, CommTimeoutError):
            raise InitError(f"rank {info.rank}: rank 0 of the {_where(info)} did not hand out "
                            "the rank table before the deadline: some rank never arrived (rank "
                            "0's error names it)") from None
        except (OSError, ValueError, RingcommError) as e:
            raise InitError(f"rank {info.rank}: the {_where(info)} failed: {e}") from None
    if "error" in reply:
        raise InitError(f"rank {info.rank}: {reply['error']}")
    return RankTable(reply["addresses"], reply["hosts"])


def _is_loopback_name(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _listener(info: environment.Rendezvous) -> socket.socket:
    """Listen where the other ranks reach rank 0: the address MASTER_ADDR (or the Slurm
    step's first node) names, when it is one of this host's; else on every interface.

    A host name that resolves to a loopback address here (Debian maps a host's own name to
    127.0.1.1) names another address on the other hosts: every interface it is then.
    """
    try:
        found = socket.getaddrinfo(info.host, info.port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise InitError(f"cannot resolve the rendezvous host {info.host!r}: {e.strerror}; check "
                        "MASTER_ADDR (or the Slurm node list) and name resolution") from None
    for family, _, _, _, sockaddr in found:
        ip = str(sockaddr[0])
        if ipaddress.ip_address(ip.split("%")[0]).is_loopback and not _is_loopback_name(info.host):
            continue
        try:
            return socket.create_server((ip, info.port), family=family)
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:
                raise InitError(f"rank 0 cannot listen for the {_where(info)}: "
                                f"{describe_errno(e)}") from None
    log.debug("ringcomm rendezvous: %s is not an address of this host as such; listening on "
              "every interface", info.host)
    try:
        return socket.create_server(("", info.port))
    except OSError as e:
        raise InitError(f"rank 0 cannot listen for the {_where(info)}: {describe_errno(e)}") \
            from None


def _serve(info: environment.Rendezvous, key: bytes, deadline: float, mine: dict) -> RankTable:
    server = _listener(info)
    reports: dict[int, dict] = {0: mine}
    conns: dict[int, socket.socket] = {}
    errors: list[str] = []
    lock = threading.Lock()
    arrived = threading.Condition(lock)
    # Reading a report takes a thread; only connections that proved the key get one, and no
    # more of them at once than the job has ranks (and a few for ranks that reconnect).
    readers = threading.BoundedSemaphore(info.size + 8)

    def report(c: socket.socket, peer: str) -> None:
        try:
            c.settimeout(max(0.1, min(10.0, deadline - time.monotonic())))
            got = _recv(c)
            r, size = int(got["rank"]), int(got["size"])
        except (OSError, ValueError, KeyError, RingcommError) as e:
            log.warning("ringcomm rendezvous: a rank at %s sent no report: %s", peer, e)
            c.close()
            return
        finally:
            readers.release()
        with arrived:
            if size != info.size:
                errors.append(f"rank {r} reports a job of {size} ranks, rank 0 one of "
                              f"{info.size}; every rank must see the same WORLD_SIZE")
            elif not 0 <= r < info.size:
                errors.append(f"a rank reports rank {r}, outside 0..{info.size - 1}")
            elif r in reports:
                errors.append(f"rank {r} reported twice (from {got.get('address')!r} and "
                              f"{reports[r].get('address')!r}); every rank needs its own RANK")
            else:
                reports[r] = got
            conns.setdefault(r, c)
            arrived.notify_all()

    def admit(c: socket.socket, hello: Hello, peer: str) -> None:
        if hello.kind != Kind.RDZV or not readers.acquire(blocking=False):
            c.close()  # a probe of the key (QUERY), or more reports at once than ranks
            return
        threading.Thread(target=report, args=(c, peer), daemon=True,
                         name="ringcomm-rendezvous").start()

    gate = handshake.Gate([server], key, admit, label="rendezvous")
    try:
        with arrived:
            arrived.wait_for(lambda: bool(errors) or len(reports) == info.size,
                             max(0.0, deadline - time.monotonic()))
            missing = [r for r in range(info.size) if r not in reports]
            if errors:
                problem = f"the {_where(info)} failed: {'; '.join(errors)}"
            elif missing:
                problem = (f"the {_where(info)} timed out: rank(s) "
                           f"{', '.join(map(str, missing))} of {info.size} never arrived; are "
                           "they started, and can they reach rank 0?")
            else:
                problem = ""
            table = RankTable([[reports[r]["address"]] for r in range(info.size)],
                              [str(reports[r]["host"]) for r in range(info.size)]) \
                if not problem else None
            for c in conns.values():
                try:
                    _send(c, {"error": problem} if table is None else
                          {"addresses": table.addresses, "hosts": table.hosts})
                except OSError:
                    pass  # that rank is gone; it reports its own error
    finally:
        gate.close()
        for c in conns.values():
            c.close()
    if table is None:
        raise InitError(f"rank 0: {problem}")
    return table
