"""The namespace hosts themselves: reachable over ssh, isolated, and removable."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from tests import harness
from tests.multihost import netns

pytestmark = pytest.mark.timeout(120)


def test_ssh_reaches_each_host(cluster: netns.Cluster) -> None:
    for host in cluster.hosts:
        res = subprocess.run(["ssh", host.ip, "ip", "-4", "-o", "addr"], capture_output=True,
                             text=True, timeout=20, stdin=subprocess.DEVNULL, check=False)
        assert res.returncode == 0, res.stderr
        assert f"inet {host.ip}/24" in res.stdout
        others = [h.ip for h in cluster.hosts if h is not host]
        assert not any(ip in res.stdout for ip in others)


def test_tcp_from_host1_to_host2(cluster: netns.Cluster) -> None:
    h1, h2 = cluster.hosts[0], cluster.hosts[1]
    server = (
        f"import socket;s=socket.socket();s.bind(({h2.ip!r},0));s.listen();"
        "print(s.getsockname()[1],flush=True);c,_=s.accept();c.sendall(c.recv(5))"
    )
    srv = subprocess.Popen(["ssh", h2.ip, shlex.join([sys.executable, "-c", server])],
                           stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        port = int(srv.stdout.readline())
        client = (
            f"import socket;c=socket.create_connection(({h2.ip!r},{port}),timeout=5);"
            "c.sendall(b'hello');print(c.recv(5).decode())"
        )
        res = cluster.ssh(h1, [sys.executable, "-c", client])
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "hello"
        assert srv.wait(timeout=10) == 0
    finally:
        srv.kill()
        srv.wait(timeout=5)


def test_private_dir_is_per_host(cluster: netns.Cluster) -> None:
    h1, h2 = cluster.hosts[0], cluster.hosts[1]
    (h2.private_dir / "only-on-h2.txt").write_text("x")
    try:
        path = str(cluster.private_path / "only-on-h2.txt")
        assert cluster.ssh(h2, ["test", "-f", path]).returncode == 0
        assert cluster.ssh(h1, ["test", "-f", path]).returncode == 1
        assert not (cluster.private_path / "only-on-h2.txt").exists()
    finally:
        (h2.private_dir / "only-on-h2.txt").unlink()


def test_no_stray_processes_after_ssh(cluster: netns.Cluster) -> None:
    harness.assert_none_survive(pids=cluster.strays, what="the ssh sessions")


def test_teardown_removes_everything(tmp_path) -> None:
    reason = netns.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    one = netns.build(tmp_path, count=1)
    # A detached process inside the host must not survive teardown either.
    res = subprocess.run(["ssh", "-F", str(one.ssh_config), one.hosts[0].ip,
                          "setsid sleep 300 >/dev/null 2>&1 < /dev/null &"],
                         timeout=20, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert one.stray_pids(one.hosts[0]) != []
    pids = one.pids(one.hosts[0])
    assert netns.teardown(one) == []
    assert netns.leftovers(one) == []
    assert harness.survivors(pids=pids) == []


def test_hosts_reach_each_other_over_ssh(cluster: netns.Cluster) -> None:
    h1, h2, _ = cluster.hosts
    res = cluster.ssh(h1, ["ssh", h2.ip, "ip", "-4", "-o", "addr", "show", "eth0"])
    assert res.returncode == 0, res.stderr
    assert f"inet {h2.ip}/24" in res.stdout
