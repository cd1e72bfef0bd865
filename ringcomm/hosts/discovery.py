"""The ``ringcomm config`` command: write the hostfile from the hosts themselves.

For every host, in parallel over ssh: find the IPv4 address of the named
interface, or of the interface of the default route; then check that every
host reaches every other one's address with a TCP probe (a failing ring
neighbour pair is an error). The result is MLX's hostfile JSON
(``{"backend", "envs", "hosts": [{"ssh", "ips"}]}``), which runs as is with
``ringcomm launch --hostfile`` and ``mlx.launch --hostfile``.

:func:`configure` is the Python API; :func:`main` the command line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import netinfo, reach, ssh
from .hostfile import HostEntry, Hostfile, dump_hostfile, parse_hostfile
from .report import Link, reach_hint

__all__ = [
    "ConfigError",
    "Discovery",
    "HostAddress",
    "choose_address",
    "configure",
    "hostfile_json",
    "to_dot",
]


class ConfigError(RuntimeError):
    """The hosts could not be configured; the message lists every reason with a hint."""


@dataclass(frozen=True)
class HostAddress:
    """The address a host's ranks will use and where it came from."""

    ssh: str
    interface: str
    ip: str
    reason: str


@dataclass
class Discovery:
    """What ``configure`` found: addresses in host order, dropped hosts, probed links."""

    hosts: list[HostAddress]
    dropped: list[str]
    links: list[Link]

    def problems(self) -> list[str]:
        """Return one line per ring neighbour pair that does not connect."""
        n = len(self.hosts)
        ring = {(i, (i + 1) % n) for i in range(n)} if n > 1 else set()
        return [f"{link.src_host} cannot reach {link.dst_host} at {link.address}: {link.error}; "
                f"hint: {reach_hint(link)}"
                for link in self.links if not link.ok and (link.src_rank, link.dst_rank) in ring]


def choose_address(host: str, info: netinfo.NetInfo, interface: str | None,
                   ssh_ip: str | None = None) -> HostAddress:
    """Return the IPv4 address ``host`` is reached at for the ring.

    ``interface`` when named; else the default route's interface; else, on a
    host without a default route (a private switch, a direct cable), its only
    interface with IPv4, or the one holding ``ssh_ip`` (the address ssh
    reaches it at). Otherwise the caller must name one.
    """
    with_v4 = [i for i in info.interfaces if i.ipv4 and not i.loopback and i.up]
    listing = ", ".join(f"{i.name} ({i.ipv4[0]})" for i in with_v4) or "none"
    reason = "named with --interface"
    if interface is None and info.default_interface is not None:
        interface, reason = info.default_interface, "interface of the default route"
    elif interface is None:
        holding = [i for i in with_v4 if ssh_ip in i.ipv4]
        if len(with_v4) == 1:
            interface, reason = with_v4[0].name, "no default route; its only interface with IPv4"
        elif holding:
            interface, reason = holding[0].name, f"no default route; it holds {ssh_ip}, the " \
                                                 "address ssh reaches"
        else:
            raise ConfigError(f"{host}: no default route, and {len(with_v4)} interfaces with "
                              f"IPv4 ({listing}) of which none holds the address ssh reaches; "
                              "hint: pass --interface NAME")
    found = [i for i in info.interfaces if i.name == interface]
    if not found:
        names = ", ".join(i.name for i in info.interfaces) or "none"
        raise ConfigError(f"{host}: no interface {interface!r}; expected one of: {names}")
    if not found[0].ipv4:
        raise ConfigError(f"{host}: interface {interface!r} has no IPv4 address; interfaces "
                          f"with IPv4: {listing}; hint: pass --interface with one of them")
    return HostAddress(host, interface, found[0].ipv4[0], reason)


def _ssh_ip(host: str) -> str | None:
    """Return the address ssh reaches `host` at, or None when it does not resolve."""
    try:
        return ssh.resolve_ssh_host(host)[0]
    except OSError:
        return None


def _duplicates(addrs: list[HostAddress]) -> list[str]:
    seen: dict[str, HostAddress] = {}
    out = []
    for a in addrs:
        if a.ip in seen:
            first = seen[a.ip]
            out.append(f"{first.ssh} and {a.ssh} both have address {a.ip} ({first.interface}, "
                       f"{a.interface}); hint: they may be one machine, or the interface is "
                       f"loopback or NAT; pass --interface with a shared network's interface")
        seen.setdefault(a.ip, a)
    return out


def _discover(runner: reach.Runner) -> netinfo.NetInfo | str:
    """Return the host's network facts, or why ssh to it failed."""
    try:
        res = runner.run(["sh", "-c", netinfo.DISCOVER])
    except OSError as e:
        raise ConfigError(f"{runner.host}: cannot run sh: {e}") from e
    if not runner.local and (res.returncode == ssh.SSH_ERROR or res.timed_out):
        return ssh.explain(res, runner.host)
    try:
        return netinfo.parse_discover(res.stdout)
    except netinfo.NetInfoError as e:
        raise ConfigError(f"{runner.host}: {e}") from None


def _probe_links(runners: dict[str, reach.Runner], addrs: list[HostAddress]) -> list[Link]:
    """Connect from every host to every other host's address; return every link."""
    listeners = {a.ssh: reach.Listener(runners[a.ssh], [f"{a.ip}:0"]) for a in addrs}
    try:
        bound: dict[str, str] = {}
        for a in addrs:
            runner = runners[a.ssh]
            got = listeners[a.ssh].result(time.monotonic() + runner.connect_timeout
                                          + runner.timeout)
            if isinstance(got, str) or got[0]["error"]:
                why = got if isinstance(got, str) else got[0]["error"]
                raise ConfigError(f"{a.ssh}: cannot listen on {a.ip}: {why}; hint: check that "
                                  f"{runner.python} runs there, or pass --python")
            bound[a.ssh] = reach.bound_address(got[0])

        def connect(i: int) -> list[Link]:
            src = addrs[i]
            targets = [(j, bound[d.ssh]) for j, d in enumerate(addrs) if j != i]
            runner = runners[src.ssh]
            errors = reach.connect_from(runner, [t for _, t in targets],
                                         min(runner.connect_timeout, 5.0))
            return [Link(i, j, src.ssh, addrs[j].ssh, t, errors[t]) for j, t in targets]

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(addrs)))) as pool:
            return [link for links in pool.map(connect, range(len(addrs))) for link in links]
    finally:
        for lst in listeners.values():
            lst.close()


def configure(hosts: Sequence[str], *, interface: str | None = None,
              ignore_unreachable: bool = False, python: str | None = None,
              connect_timeout: float = ssh.DEFAULT_CONNECT_TIMEOUT, timeout: float = 20.0,
              log: Callable[[str], None] = lambda _: None) -> Discovery:
    """Find each host's address and probe the links between hosts.

    Raises :class:`ConfigError` listing unreachable hosts (unless
    ``ignore_unreachable`` drops them), interfaces without IPv4 and hosts
    sharing an address.
    """
    names = list(dict.fromkeys(h.strip() for h in hosts if h.strip()))
    if not names:
        raise ConfigError("no hosts given; expected e.g. --hosts host1,host2")
    runners = {n: reach.Runner(n, ssh.is_local_host(n, timeout=connect_timeout),
                                python or sys.executable, None, connect_timeout, timeout)
               for n in names}
    with ThreadPoolExecutor(max_workers=min(16, len(names))) as pool:
        infos = dict(zip(names, pool.map(_discover, runners.values())))
    unreachable = [f"{n}: {why}" for n, why in infos.items() if isinstance(why, str)]
    if unreachable and not ignore_unreachable:
        raise ConfigError("cannot reach over ssh (or pass --ignore-unreachable to drop them):\n  "
                          + "\n  ".join(unreachable))
    for line in unreachable:
        log(f"dropped {line}")
    dropped = [n for n, why in infos.items() if isinstance(why, str)]
    names = [n for n in names if n not in dropped]
    if not names:
        raise ConfigError("no host is reachable over ssh")
    addrs, errors = [], []
    for n in names:
        info = infos[n]
        assert isinstance(info, netinfo.NetInfo)
        try:
            addrs.append(choose_address(n, info, interface, _ssh_ip(n)))
        except ConfigError as e:
            errors.append(str(e))
    errors += _duplicates(addrs)
    if errors:
        raise ConfigError("\n".join(errors))
    for a in addrs:
        log(f"{a.ssh}: {a.ip} on {a.interface} ({a.reason})")
    links = _probe_links(runners, addrs) if len(addrs) > 1 else []
    return Discovery(hosts=addrs, dropped=dropped, links=links)


def hostfile_json(addrs: Sequence[HostAddress], backend: str = "ring",
                  envs: Sequence[tuple[str, str]] = ()) -> str:
    """Return MLX's hostfile JSON for ``addrs``, with every key MLX's tools expect."""
    hostfile = Hostfile(tuple(HostEntry(a.ssh, (a.ip,)) for a in addrs), backend, tuple(envs))
    text = dump_hostfile(hostfile, every_key=True)
    parse_hostfile(json.loads(text))  # what is written must load again
    return text


def to_dot(addrs: Sequence[HostAddress], links: Sequence[Link]) -> str:
    """Return the hosts and their links in Graphviz DOT (dashed: one way only)."""
    ok = {(link.src_host, link.dst_host) for link in links if link.ok}
    lines = ["graph ringcomm {"]
    for a in addrs:
        label = json.dumps(f"{a.ssh}\n{a.ip} ({a.interface})")
        lines.append(f"  {json.dumps(a.ssh)} [label={label}];")
    for i, a in enumerate(addrs):
        for b in addrs[i + 1:]:
            both = (a.ssh, b.ssh) in ok and (b.ssh, a.ssh) in ok
            one = (a.ssh, b.ssh) in ok or (b.ssh, a.ssh) in ok
            if both:
                lines.append(f"  {json.dumps(a.ssh)} -- {json.dumps(b.ssh)};")
            elif one:
                lines.append(f"  {json.dumps(a.ssh)} -- {json.dumps(b.ssh)} [style=dashed];")
    return "\n".join([*lines, "}"]) + "\n"
