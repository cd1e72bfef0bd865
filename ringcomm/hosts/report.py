"""What ``ringcomm check`` found, and how it is printed."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Finding", "Link", "Report", "Status", "bind_hint", "format_report", "reach_hint"]

COLUMNS = ("ssh", "python", "ringcomm", "script", "mpirun", "bind", "reach")


class Status(enum.Enum):
    """The outcome of one check."""

    OK = "ok"
    FAIL = "FAIL"
    SKIP = "-"


@dataclass(frozen=True)
class Finding:
    """One check on one host: what was checked, the outcome, and what to try."""

    host: str
    item: str
    status: Status
    detail: str
    hint: str = ""

    def message(self) -> str:
        """Return the one-line report of this finding."""
        text = f"{self.host} {self.item}: {self.detail}"
        return f"{text}; hint: {self.hint}" if self.hint else text


@dataclass(frozen=True)
class Link:
    """One ring connection tried: from ``src_rank``'s host to ``dst_rank``'s address."""

    src_rank: int
    dst_rank: int
    src_host: str
    dst_host: str
    address: str
    error: str | None

    @property
    def ok(self) -> bool:
        """Return whether the connection reached the probe listener."""
        return self.error is None

    def message(self) -> str:
        """Return the one-line report of this link."""
        where = (f"rank {self.src_rank} on {self.src_host} -> rank {self.dst_rank} "
                 f"at {self.address} on {self.dst_host}")
        if self.ok:
            return f"{where}: ok"
        return f"{where}: {self.error}; hint: {reach_hint(self)}"


@dataclass
class Report:
    """Everything one check run found."""

    hosts: list[str]
    ranks: int
    findings: list[Finding]
    links: list[Link]
    seconds: float

    @property
    def ok(self) -> bool:
        """Return whether every check passed."""
        return not self.problems()

    def problems(self) -> list[str]:
        """Return one line per failure, each with a hint."""
        out = [f.message() for f in self.findings if f.status is Status.FAIL]
        return out + [link.message() for link in self.links if not link.ok]

    def status(self, host: str, item: str) -> Status:
        """Return the outcome of ``item`` on ``host`` (SKIP when it was not checked)."""
        if item == "reach":
            mine = [link for link in self.links if link.dst_host == host]
            if not mine:
                return Status.SKIP
            return Status.OK if all(link.ok for link in mine) else Status.FAIL
        for f in self.findings:
            if f.host == host and f.item == item:
                return f.status
        return Status.SKIP


def bind_hint(error: str, host: str) -> str:
    """Return what to try when a ring address cannot be bound on ``host``."""
    if error.startswith("EADDRINUSE"):
        return f"the port is taken on {host}; choose another --starting-port"
    if error.startswith("EADDRNOTAVAIL"):
        return f"that ip is not an address of {host}; fix the host's \"ips\" in the hostfile"
    if error.startswith("EACCES"):
        return "ports below 1024 need root; choose --starting-port 1024 or above"
    return "check the address and port"


def reach_hint(link: Link) -> str:
    """Return what to try when a ring connection failed."""
    error = link.error or ""
    ip = link.address.rpartition(":")[0]
    if error.startswith("ECONNREFUSED"):
        return (f"a firewall on {link.dst_host} rejects the port, or {ip} belongs to "
                f"another machine")
    if error.startswith("ETIMEDOUT"):
        return (f"a firewall drops the traffic, or {ip} is on a network {link.src_host} "
                f"does not reach; check the hostfile's ips")
    if error.startswith(("EHOSTUNREACH", "ENETUNREACH")):
        return f"{link.src_host} has no route to {ip}; use an ip on a network both hosts share"
    return "check the addresses and firewalls of both hosts"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_report(report: Report) -> str:
    """Return the printable report: the host table, the reachability matrix, the problems."""
    rows = [["host", *COLUMNS]]
    for host in report.hosts:
        rows.append([host, *(report.status(host, c).value for c in COLUMNS)])
    lines = _table(rows)
    if report.links:
        lines += ["", "ring reachability (row host connects to column host's ring port):"]
        cells: dict[tuple[str, str], str] = {}
        for link in report.links:
            key = (link.src_host, link.dst_host)
            cells[key] = "FAIL" if not link.ok or cells.get(key) == "FAIL" else "ok"
        matrix = [["", *report.hosts]]
        for src in report.hosts:
            matrix.append([src, *(cells.get((src, dst), ".") for dst in report.hosts)])
        lines += _table(matrix)
    problems = report.problems()
    if problems:
        lines += [""] + [f"FAIL {p}" for p in problems]
    summary = (f"{len(report.hosts)} host(s), {report.ranks} rank(s): "
               f"{len(problems) or 'no'} problem(s) ({report.seconds:.1f}s)")
    return "\n".join([*lines, "", summary])
