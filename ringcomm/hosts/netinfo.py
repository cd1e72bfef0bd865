"""Find a host's interfaces and default-route interface from its own tools' output.

Linux hosts answer with ``ip -j addr show`` and ``ip -j -4 route show
default``; macOS hosts with ``route -n get default`` and ``ipconfig getifaddr``
for each interface of ``ifconfig -l``. :data:`DISCOVER` is the one constant
shell script that collects these in a single ssh round trip; the parsers below
are pure and tested on captured outputs.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

__all__ = [
    "DISCOVER",
    "Interface",
    "NetInfo",
    "NetInfoError",
    "parse_discover",
    "parse_ip_addr",
    "parse_ip_route_default",
    "parse_ipconfig_getifaddr",
    "parse_macos_ifaddrs",
    "parse_macos_route_default",
]

# Runs on the host through its login shell; it interpolates nothing from us.
DISCOVER = """\
os=$(uname -s)
echo "@@os $os"
if [ "$os" = Darwin ]; then
  echo "@@route"; route -n get default 2>/dev/null
  echo "@@ifaddrs"
  for i in $(ifconfig -l); do printf '%s ' "$i"; ipconfig getifaddr "$i" || echo; done
else
  echo "@@addr"; ip -j addr show
  echo "@@route"; ip -j -4 route show default
fi
"""


class NetInfoError(ValueError):
    """A host's network tools answered with something these parsers do not understand."""


@dataclass(frozen=True)
class Interface:
    """One network interface and its IPv4 addresses."""

    name: str
    ipv4: tuple[str, ...] = ()
    up: bool = True
    loopback: bool = False


@dataclass(frozen=True)
class NetInfo:
    """What a host told about its network: OS, interfaces, default-route interface."""

    os: str
    interfaces: tuple[Interface, ...]
    default_interface: str | None


def _load_json(text: str, what: str) -> object:
    try:
        return json.loads(text) if text.strip() else []
    except json.JSONDecodeError as e:
        raise NetInfoError(f"{what}: expected JSON, got {text[:80]!r} ({e.msg})") from None


def parse_ip_addr(text: str) -> list[Interface]:
    """Return the interfaces listed by ``ip -j addr show``."""
    data = _load_json(text, "ip -j addr")
    if not isinstance(data, list):
        raise NetInfoError(f"ip -j addr: expected a JSON list, got {type(data).__name__}")
    out = []
    for entry in data:
        if not isinstance(entry, dict) or "ifname" not in entry:
            continue
        flags = entry.get("flags", [])
        addrs = tuple(a["local"] for a in entry.get("addr_info", [])
                      if a.get("family") == "inet" and "local" in a)
        out.append(Interface(name=entry["ifname"], ipv4=addrs, up="UP" in flags,
                             loopback="LOOPBACK" in flags))
    return out


def parse_ip_route_default(text: str) -> str | None:
    """Return the interface of the first default route in ``ip -j -4 route show default``."""
    data = _load_json(text, "ip -j route")
    if not isinstance(data, list):
        raise NetInfoError(f"ip -j route: expected a JSON list, got {type(data).__name__}")
    for route in data:
        if isinstance(route, dict) and route.get("dst") == "default" and route.get("dev"):
            return str(route["dev"])
    return None


def parse_macos_route_default(text: str) -> str | None:
    """Return the ``interface:`` of ``route -n get default`` on macOS, or None."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.strip() == "interface" and value.strip():
            return value.strip()
    return None


def parse_ipconfig_getifaddr(text: str) -> str | None:
    """Return the IPv4 address printed by ``ipconfig getifaddr IFACE``, or None."""
    word = text.strip()
    if not word:
        return None
    try:
        return str(ipaddress.IPv4Address(word))
    except ValueError:
        raise NetInfoError(f"ipconfig getifaddr: expected an IPv4 address, got {word!r}") from None


def parse_macos_ifaddrs(text: str) -> list[Interface]:
    """Return the interfaces of the ``name [address]`` lines DISCOVER prints on macOS."""
    out = []
    for line in text.splitlines():
        name, _, rest = line.strip().partition(" ")
        if not name:
            continue
        addr = parse_ipconfig_getifaddr(rest)
        out.append(Interface(name=name, ipv4=(addr,) if addr else (),
                             loopback=name.startswith("lo")))
    return out


def _sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@"):
            current, _, inline = line[2:].partition(" ")
            sections[current] = [inline] if inline else []
        elif current is not None:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def parse_discover(text: str) -> NetInfo:
    """Return the host's network facts from the output of :data:`DISCOVER`."""
    sections = _sections(text)
    if "os" not in sections:
        raise NetInfoError(f"expected the discovery output to start with '@@os', got {text[:80]!r}")
    os_name = sections["os"].strip()
    if os_name == "Darwin":
        return NetInfo(os_name, tuple(parse_macos_ifaddrs(sections.get("ifaddrs", ""))),
                       parse_macos_route_default(sections.get("route", "")))
    if "addr" not in sections or not sections["addr"].strip():
        raise NetInfoError(f"{os_name} host: 'ip -j addr show' printed nothing; "
                           f"hint: install iproute2 there")
    return NetInfo(os_name, tuple(parse_ip_addr(sections["addr"])),
                   parse_ip_route_default(sections.get("route", "")))
