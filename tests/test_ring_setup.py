"""Ring set-up failures: a busy port, a peer that never comes, a malformed hostfile."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.harness import env

pytestmark = pytest.mark.timeout(60)


def _rank0(tmp_path, hosts: list, timeout: str = "2") -> subprocess.CompletedProcess:
    path = tmp_path / "hosts.json"
    path.write_text(json.dumps(hosts))
    code = "import ringcomm; ringcomm.init()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env=env(RINGCOMM_RANK="0", RINGCOMM_HOSTFILE=str(path),
                                              RINGCOMM_TIMEOUT=timeout))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_busy_port_names_the_address_and_what_to_do(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = _rank0(tmp_path, [[f"127.0.0.1:{port}"], [f"127.0.0.1:{_free_port()}"]])
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "EADDRINUSE" in out.stderr and "--starting-port" in out.stderr


def test_absent_peer_fails_after_retries_with_errno_and_hint(tmp_path) -> None:
    peer = _free_port()
    out = _rank0(tmp_path, [[f"127.0.0.1:{_free_port()}"], [f"127.0.0.1:{peer}"]])
    assert out.returncode != 0
    assert f"cannot connect to rank 1 at 127.0.0.1:{peer}" in out.stderr, out.stderr
    assert "ECONNREFUSED" in out.stderr and "is the rank started" in out.stderr


def test_address_not_on_this_host(tmp_path) -> None:
    out = _rank0(tmp_path, [["10.77.255.254:5000"], ["127.0.0.1:5001"]])
    assert out.returncode != 0
    assert "EADDRNOTAVAIL" in out.stderr and "not on this host" in out.stderr, out.stderr


@pytest.mark.parametrize("hosts, message", [
    ({"ips": []}, "non-empty list"),
    ([["127.0.0.1"]], "entry 0: expecting 'ip:port'"),
    ([[5]], "entry 0 must be a list of 'ip:port' strings"),
])
def test_malformed_rank_hostfile(tmp_path, hosts, message: str) -> None:
    out = _rank0(tmp_path, hosts)
    assert out.returncode != 0 and message in out.stderr, out.stderr
