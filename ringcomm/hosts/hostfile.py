"""Typed parse, validate and write of MLX's hostfile JSON formats.

Two formats are read, both MLX's:

- a list of hosts: ``[{"ssh": "host1", "ips": ["10.0.0.1"]}, ...]``
- an object: ``{"backend": "ring", "envs": ["K=V", ...], "hosts": [...]}``

Each host entry is one rank (``-n`` repeats it). Keys this module does not
know (for example MLX's ``"rdma"``) are accepted and ignored so that MLX's
files load unchanged.

The per-job *rank hostfile* handed to the ranks (``RINGCOMM_HOSTFILE``,
``MLX_HOSTFILE``) is a different, simpler JSON, owned by the environment
contract (`ringcomm.environment`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import backends

__all__ = [
    "HostEntry",
    "Hostfile",
    "HostfileError",
    "dump_hostfile",
    "load_hostfile",
    "parse_env_assignment",
    "parse_hostfile",
    "write_hostfile",
]



class HostfileError(ValueError):
    """A hostfile could not be read or does not have the expected shape."""


@dataclass(frozen=True)
class HostEntry:
    """One host of a hostfile: the name ssh uses and the ips the ring uses."""

    ssh: str
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hostfile:
    """A parsed hostfile: hosts in rank order, optional backend and environment."""

    hosts: tuple[HostEntry, ...]
    backend: str | None = None
    envs: tuple[tuple[str, str], ...] = field(default=())


def parse_env_assignment(text: str) -> tuple[str, str]:
    """Split ``"KEY=VALUE"`` into its parts, checking that KEY is a variable name."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    if not key or not (key[0].isalpha() or key[0] == "_") or not all(
        c.isalnum() or c == "_" for c in key
    ):
        raise ValueError(f"expected a variable name (letters, digits, _) before '=', got {key!r}")
    return key, value


def _where(source: str, what: str) -> str:
    return f"hostfile {source}: {what}"


def _parse_host(source: str, index: int, item: object) -> HostEntry:
    where = f"hosts[{index}]"
    if isinstance(item, str):
        raise HostfileError(
            _where(source, f'{where} is the string {item!r}; expected an object like '
                           f'{{"ssh": {item!r}, "ips": ["10.0.0.1"]}}')
        )
    if not isinstance(item, dict):
        raise HostfileError(
            _where(source, f"{where}: expected an object with key 'ssh', got {type(item).__name__}")
        )
    if "ssh" not in item:
        raise HostfileError(
            _where(source, f"{where}: missing key 'ssh' (the host name to ssh into); "
                           f"keys present: {sorted(item)}")
        )
    ssh = item["ssh"]
    if not isinstance(ssh, str) or not ssh.strip():
        raise HostfileError(
            _where(source, f"{where}.ssh: expected a non-empty host name, got {ssh!r}")
        )
    ips_raw = item.get("ips", [])
    if not isinstance(ips_raw, list):
        raise HostfileError(
            _where(source, f"{where}.ips: expected a list of ip addresses, got {ips_raw!r}")
        )
    ips: list[str] = []
    for j, ip in enumerate(ips_raw):
        if not isinstance(ip, str):
            raise HostfileError(
                _where(source, f"{where}.ips[{j}]: expected an ip address string, got {ip!r}")
            )
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise HostfileError(
                _where(source, f"{where}.ips[{j}]: expected an ip address like '10.0.0.1', "
                               f"got {ip!r}")
            ) from None
        ips.append(ip)
    return HostEntry(ssh=ssh.strip(), ips=tuple(ips))


def _parse_envs(source: str, raw: object) -> tuple[tuple[str, str], ...]:
    if isinstance(raw, dict):
        items = [f"{k}={v}" for k, v in raw.items()]
    elif isinstance(raw, list):
        items = raw
    else:
        raise HostfileError(
            _where(source, f"envs: expected a list of 'KEY=VALUE' strings, got {raw!r}")
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise HostfileError(
                _where(source, f"envs[{i}]: expected a 'KEY=VALUE' string, got {item!r}")
            )
        try:
            out.append(parse_env_assignment(item))
        except ValueError as e:
            raise HostfileError(_where(source, f"envs[{i}]: {e}")) from None
    return tuple(out)


def parse_hostfile(data: object, source: str = "<memory>") -> Hostfile:
    """Validate decoded hostfile JSON and return it typed."""
    backend = None
    envs: tuple[tuple[str, str], ...] = ()
    if isinstance(data, dict):
        if "hosts" not in data:
            raise HostfileError(
                _where(source, f"missing key 'hosts' (a list of {{\"ssh\", \"ips\"}} objects); "
                               f"keys present: {sorted(data)}")
            )
        hosts_raw = data["hosts"]
        if "backend" in data and data["backend"] is not None:
            backend = data["backend"]
            if backend not in backends.names():
                raise HostfileError(
                    _where(source, f"backend: expected one of {', '.join(backends.names())}, "
                                   f"got {backend!r}")
                )
        if "envs" in data and data["envs"] is not None:
            envs = _parse_envs(source, data["envs"])
    elif isinstance(data, list):
        hosts_raw = data
    else:
        raise HostfileError(
            _where(source, f"expected a list of hosts or an object with 'hosts', "
                           f"got {type(data).__name__}")
        )
    if not isinstance(hosts_raw, list):
        raise HostfileError(_where(source, f"hosts: expected a list, got {hosts_raw!r}"))
    if not hosts_raw:
        raise HostfileError(_where(source, "hosts: expected at least one host, got an empty list"))
    hosts = tuple(_parse_host(source, i, h) for i, h in enumerate(hosts_raw))
    return Hostfile(hosts=hosts, backend=backend, envs=envs)


def load_hostfile(path: str | os.PathLike[str]) -> Hostfile:
    """Read and validate a hostfile from ``path``."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise HostfileError(f"hostfile {str(p)!r} does not exist") from None
    except OSError as e:
        raise HostfileError(f"hostfile {str(p)!r} cannot be read: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HostfileError(
            f"hostfile {str(p)!r}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return parse_hostfile(data, source=repr(str(p)))


def dump_hostfile(hostfile: Hostfile, *, every_key: bool = False) -> str:
    """Return the JSON text of ``hostfile``.

    The list form when it has no backend or envs, unless ``every_key`` asks for
    the object form with every key MLX's tools write (``ringcomm config``).
    """
    hosts = [{"ssh": h.ssh, "ips": list(h.ips)} for h in hostfile.hosts]
    if hostfile.backend is None and not hostfile.envs and not every_key:
        return json.dumps(hosts, indent=2) + "\n"
    obj: dict[str, object] = {}
    if hostfile.backend is not None:
        obj["backend"] = hostfile.backend
    if hostfile.envs or every_key:
        obj["envs"] = [f"{k}={v}" for k, v in hostfile.envs]
    obj["hosts"] = hosts
    return json.dumps(obj, indent=2) + "\n"


def write_hostfile(hostfile: Hostfile, path: str | os.PathLike[str]) -> None:
    """Write ``hostfile`` as JSON to ``path``."""
    Path(path).write_text(dump_hostfile(hostfile))
