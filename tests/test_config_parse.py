"""``ringcomm config``'s parsers on captured outputs, and its pure helpers."""

from __future__ import annotations

import json

import pytest

from ringcomm.hosts import discovery as config
from ringcomm.hosts import netinfo as _netinfo
from ringcomm.hosts.hostfile import parse_hostfile
from ringcomm.hosts.report import Link

# `ip -j addr show` on a Linux host with a loopback, an ethernet with IPv4 and IPv6,
# a bridge, and a veth without any IPv4.
IP_ADDR = json.dumps([
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"], "mtu": 65536,
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"},
                   {"family": "inet6", "local": "::1", "prefixlen": 128, "scope": "host"}]},
    {"ifindex": 4, "ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "mtu": 1400, "operstate": "UP", "link_type": "ether", "address": "02:fc:00:00:00:01",
     "addr_info": [{"family": "inet", "local": "192.0.2.2", "prefixlen": 24,
                    "broadcast": "192.0.2.255", "scope": "global", "label": "eth0"},
                   {"family": "inet6", "local": "fd00::2", "prefixlen": 64, "scope": "global"}]},
    {"ifindex": 97, "ifname": "br0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "addr_info": [{"family": "inet", "local": "10.77.0.1", "prefixlen": 24, "scope": "global"},
                   {"family": "inet", "local": "10.77.1.1", "prefixlen": 24, "scope": "global"}]},
    {"ifindex": 9, "ifname": "veth9", "flags": ["BROADCAST", "MULTICAST"],
     "addr_info": [{"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"}]},
])
IP_ROUTE = '[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]}]\n'

MACOS_ROUTE = """\
   route to: default
destination: default
       mask: default
    gateway: 192.168.1.1
  interface: en0
      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING,GLOBAL>
 recvpipe  sendpipe  ssthresh  rtt,msec    rttvar  hopcount      mtu     expire
       0         0         0         0         0         0      1500         0
"""
MACOS_IFADDRS = "lo0 127.0.0.1\ngif0 \nen0 192.168.1.23\nen1 \nbridge0 169.254.10.2\n"


def test_parse_ip_addr() -> None:
    ifaces = _netinfo.parse_ip_addr(IP_ADDR)
    assert [(i.name, i.ipv4, i.up, i.loopback) for i in ifaces] == [
        ("lo", ("127.0.0.1",), True, True), ("eth0", ("192.0.2.2",), True, False),
        ("br0", ("10.77.0.1", "10.77.1.1"), True, False), ("veth9", (), False, False)]


def test_parse_ip_route_default() -> None:
    assert _netinfo.parse_ip_route_default(IP_ROUTE) == "eth0"
    assert _netinfo.parse_ip_route_default("[]") is None
    assert _netinfo.parse_ip_route_default("") is None


def test_parse_ip_errors_name_the_tool() -> None:
    with pytest.raises(_netinfo.NetInfoError, match="ip -j addr: expected JSON"):
        _netinfo.parse_ip_addr("Usage: ip addr")
    with pytest.raises(_netinfo.NetInfoError, match="expected a JSON list, got dict"):
        _netinfo.parse_ip_route_default("{}")


def test_parse_macos_route_and_ipconfig() -> None:
    assert _netinfo.parse_macos_route_default(MACOS_ROUTE) == "en0"
    assert _netinfo.parse_macos_route_default("route: writing to routing socket: not in table\n") \
        is None
    assert _netinfo.parse_ipconfig_getifaddr("192.168.1.23\n") == "192.168.1.23"
    assert _netinfo.parse_ipconfig_getifaddr("") is None
    with pytest.raises(_netinfo.NetInfoError, match="expected an IPv4 address, got 'fe80::1'"):
        _netinfo.parse_ipconfig_getifaddr("fe80::1")


def test_parse_macos_ifaddrs() -> None:
    ifaces = _netinfo.parse_macos_ifaddrs(MACOS_IFADDRS)
    assert [(i.name, i.ipv4, i.loopback) for i in ifaces] == [
        ("lo0", ("127.0.0.1",), True), ("gif0", (), False), ("en0", ("192.168.1.23",), False),
        ("en1", (), False), ("bridge0", ("169.254.10.2",), False)]


def test_parse_discover_linux_and_macos() -> None:
    linux = _netinfo.parse_discover(f"@@os Linux\n@@addr\n{IP_ADDR}\n@@route\n{IP_ROUTE}")
    assert linux.os == "Linux" and linux.default_interface == "eth0"
    assert len(linux.interfaces) == 4
    mac = _netinfo.parse_discover(f"@@os Darwin\n@@route\n{MACOS_ROUTE}@@ifaddrs\n{MACOS_IFADDRS}")
    assert mac.os == "Darwin" and mac.default_interface == "en0"
    assert config.choose_address("m", mac, None).ip == "192.168.1.23"


def test_parse_discover_without_ip_tool() -> None:
    with pytest.raises(_netinfo.NetInfoError, match="install iproute2"):
        _netinfo.parse_discover("@@os Linux\n@@addr\n@@route\n")
    with pytest.raises(_netinfo.NetInfoError, match="start with '@@os'"):
        _netinfo.parse_discover("sh: 1: uname: not found\n")


def test_discover_script_runs_here() -> None:
    from ringcomm.hosts import ssh
    res = ssh.run(["sh", "-c", _netinfo.DISCOVER], timeout=20)
    info = _netinfo.parse_discover(res.stdout)
    assert any(i.loopback for i in info.interfaces)


def _info() -> _netinfo.NetInfo:
    return _netinfo.NetInfo("Linux", tuple(_netinfo.parse_ip_addr(IP_ADDR)), "eth0")


def test_choose_address() -> None:
    a = config.choose_address("h", _info(), None)
    assert (a.interface, a.ip, a.reason) == ("eth0", "192.0.2.2", "interface of the default route")
    assert config.choose_address("h", _info(), "br0").ip == "10.77.0.1"
    with pytest.raises(config.ConfigError, match="h: interface 'veth9' has no IPv4 address; "
                       r"interfaces with IPv4: eth0 \(192.0.2.2\), br0 \(10.77.0.1\)"):
        config.choose_address("h", _info(), "veth9")
    with pytest.raises(config.ConfigError, match="h: no interface 'eth7'; expected one of: lo, "):
        config.choose_address("h", _info(), "eth7")
    no_route = _netinfo.NetInfo("Linux", _info().interfaces, None)
    with pytest.raises(config.ConfigError, match="no default route, and 2 interfaces with IPv4 "
                       r"\(eth0 \(192.0.2.2\), br0 \(10.77.0.1\)\) of which none holds the "
                       "address ssh reaches; hint: pass --interface NAME"):
        config.choose_address("h", no_route, None)


def test_without_a_default_route_the_interface_ssh_reaches_or_the_only_one_is_chosen() -> None:
    no_route = _netinfo.NetInfo("Linux", _info().interfaces, None)
    a = config.choose_address("h", no_route, None, ssh_ip="10.77.0.1")
    assert (a.interface, a.ip) == ("br0", "10.77.0.1")
    assert a.reason == "no default route; it holds 10.77.0.1, the address ssh reaches"
    only = _netinfo.NetInfo("Linux", tuple(i for i in _info().interfaces
                                           if i.loopback or i.name == "br0"), None)
    a = config.choose_address("h", only, None, ssh_ip="192.0.2.99")
    assert (a.interface, a.ip) == ("br0", "10.77.0.1")
    assert a.reason == "no default route; its only interface with IPv4"


def test_hostfile_json_loads_back_in_mlx_form() -> None:
    addrs = [config.HostAddress("h1", "eth0", "10.0.0.1", ""),
             config.HostAddress("h2", "eth0", "10.0.0.2", "")]
    text = config.hostfile_json(addrs, "ring", [("A", "1")])
    data = json.loads(text)
    assert data == {"backend": "ring", "envs": ["A=1"],
                    "hosts": [{"ssh": "h1", "ips": ["10.0.0.1"]}, {"ssh": "h2", "ips": ["10.0.0.2"]}]}
    assert [h.ssh for h in parse_hostfile(data).hosts] == ["h1", "h2"]


def test_dot_and_problems() -> None:
    addrs = [config.HostAddress(f"h{i}", "eth0", f"10.0.0.{i}", "") for i in (1, 2, 3)]
    links = [Link(0, 1, "h1", "h2", "10.0.0.2:5", None), Link(1, 0, "h2", "h1", "10.0.0.1:5", None),
             Link(1, 2, "h2", "h3", "10.0.0.3:5", "ECONNREFUSED: Connection refused"),
             Link(2, 1, "h3", "h2", "10.0.0.2:5", None),
             Link(0, 2, "h1", "h3", "10.0.0.3:5", "ETIMEDOUT: timed out after 5s"),
             Link(2, 0, "h3", "h1", "10.0.0.1:5", "ETIMEDOUT: timed out after 5s")]
    dot = config.to_dot(addrs, links)
    assert dot.startswith("graph ringcomm {\n")
    assert '  "h1" [label="h1\\n10.0.0.1 (eth0)"];' in dot
    assert '  "h1" -- "h2";' in dot
    assert '  "h2" -- "h3" [style=dashed];' in dot
    assert '"h1" -- "h3"' not in dot
    problems = config.Discovery(addrs, [], links).problems()
    # h1 -> h3 is not a ring pair (ring: h1->h2, h2->h3, h3->h1), so two problems.
    assert [p.split(":")[0] for p in problems] == ["h2 cannot reach h3 at 10.0.0.3",
                                                  "h3 cannot reach h1 at 10.0.0.1"]
    assert all("hint:" in p for p in problems)
