"""``ringcomm config`` against the namespace hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ringcomm.hosts.cli import config_main
from tests.multihost import netns

pytestmark = pytest.mark.timeout(180)

REPO = str(Path(__file__).resolve().parents[2])

JOB = """\
import numpy as np, ringcomm
g = ringcomm.init(strict=True)
x = ringcomm.all_sum(np.ones(4) * (g.rank() + 1))
print("rank", g.rank(), "of", g.size(), "sum", x.tolist(), flush=True)
"""


def _config(capsys, *args: str) -> tuple[int, str, str]:
    rc = config_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_config_writes_a_hostfile_that_launch_runs(cluster: netns.Cluster, tmp_path: Path,
                                                    capsys) -> None:
    hostfile = tmp_path / "hosts.json"
    rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--output", str(hostfile),
                         "--env", "A=1")
    assert rc == 0, err
    data = json.loads(hostfile.read_text())
    assert data == {"backend": "ring", "envs": ["A=1"],
                    "hosts": [{"ssh": ip, "ips": [ip]} for ip in cluster.ips]}
    for ip in cluster.ips:
        assert f"{ip}: {ip} on eth0 (interface of the default route)" in err
    job = tmp_path / "job.py"
    job.write_text(JOB)
    res = subprocess.run([sys.executable, "-m", "ringcomm", "launch", "--hostfile", str(hostfile),
                          "--cwd", REPO, str(job)], capture_output=True, text=True, timeout=120,
                         cwd=REPO, env=cluster.env(), stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr
    assert sorted(line for line in res.stdout.splitlines() if line.startswith("rank")) == [
        f"rank {r} of 3 sum [6.0, 6.0, 6.0, 6.0]" for r in range(3)]


def test_interface_option(cluster: netns.Cluster, capsys) -> None:
    rc, out, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--interface", "eth0")
    assert rc == 0, err
    assert [h["ips"] for h in json.loads(out)["hosts"]] == [[ip] for ip in cluster.ips]
    assert "on eth0 (named with --interface)" in err
    rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--interface", "eth9")
    assert rc == 1
    assert f"{cluster.ips[0]}: no interface 'eth9'; expected one of: " in err


def test_interface_without_ipv4(cluster: netns.Cluster, capsys) -> None:
    for host in cluster.hosts:
        cluster.add_interface(host, "nov4")
    try:
        rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--interface", "nov4")
    finally:
        for host in cluster.hosts:
            cluster.del_interface(host, "nov4")
    assert rc == 1
    for ip in cluster.ips:
        assert f"{ip}: interface 'nov4' has no IPv4 address; interfaces with IPv4: eth0 ({ip})" \
            in err


def test_same_address_on_two_hosts(cluster: netns.Cluster, capsys) -> None:
    rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips[:2]), "--interface", "lo")
    assert rc == 1
    assert f"{cluster.ips[0]} and {cluster.ips[1]} both have address 127.0.0.1" in err


def test_neighbour_unreachable_on_chosen_interface(cluster: netns.Cluster, capsys) -> None:
    # Each host gets an address on an isolated link: ssh works, the ring addresses don't.
    net = cluster.bridge_ip.split(".")[2]
    for host in cluster.hosts:
        cluster.add_interface(host, "side", f"10.78.{net}.{host.index}/24")
    try:
        start = time.monotonic()
        rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--interface", "side")
        elapsed = time.monotonic() - start
    finally:
        for host in cluster.hosts:
            cluster.del_interface(host, "side")
    assert rc == 1
    assert "ring neighbours do not connect" in err
    h1, h2, h3 = cluster.ips
    for src, dst, idx in ((h1, h2, 2), (h2, h3, 3), (h3, h1, 1)):
        assert f"{src} cannot reach {dst} at 10.78.{net}.{idx}:" in err
    assert elapsed < 30


def test_unreachable_host(cluster: netns.Cluster, tmp_path: Path, capsys) -> None:
    hosts = ",".join([*cluster.ips, cluster.unreachable_ip])
    start = time.monotonic()
    rc, out, err = _config(capsys, "--hosts", hosts)
    assert time.monotonic() - start < 10
    assert rc == 1 and out == ""
    assert "cannot reach over ssh (or pass --ignore-unreachable to drop them)" in err
    assert f"{cluster.unreachable_ip}: ssh to {cluster.unreachable_ip}" in err and "hint:" in err
    rc, out, err = _config(capsys, "--hosts", hosts, "--ignore-unreachable")
    assert rc == 0, err
    assert [h["ssh"] for h in json.loads(out)["hosts"]] == cluster.ips
    assert f"dropped {cluster.unreachable_ip}: ssh to" in err


def test_dot_output(cluster: netns.Cluster, capsys) -> None:
    rc, out, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--dot")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "graph ringcomm {" and lines[-1] == "}"
    h1, h2, h3 = cluster.ips
    for a, b in ((h1, h2), (h1, h3), (h2, h3)):
        assert f'  "{a}" -- "{b}";' in lines
    assert f'  "{h1}" [label="{h1}\\n{h1} (eth0)"];' in lines


def test_config_works_on_hosts_without_a_default_route(cluster: netns.Cluster, tmp_path: Path,
                                                       capsys) -> None:
    h1 = cluster.hosts[0]
    for h in cluster.hosts:
        assert cluster.netns_exec(h, ["ip", "route", "del", "default"]).returncode == 0
    cluster.add_interface(h1, "rcx0", "10.99.0.1/24")  # a second interface with IPv4 on h1
    try:
        hostfile = tmp_path / "hosts.json"
        rc, _, err = _config(capsys, "--hosts", ",".join(cluster.ips), "--output", str(hostfile))
        assert rc == 0, err
        assert f"{h1.ip}: {h1.ip} on eth0 (no default route; it holds {h1.ip}, the address " \
               "ssh reaches)" in err
        for h in cluster.hosts[1:]:
            assert f"{h.ip}: {h.ip} on eth0 (no default route; its only interface with IPv4)" \
                in err
        job = tmp_path / "job.py"
        job.write_text(JOB)
        res = subprocess.run([sys.executable, "-m", "ringcomm", "launch", "--hostfile",
                              str(hostfile), "--cwd", REPO, str(job)], capture_output=True,
                             text=True, timeout=120, cwd=REPO, env=cluster.env(),
                             stdin=subprocess.DEVNULL, check=False)
        assert res.returncode == 0, res.stderr
        assert len([ln for ln in res.stdout.splitlines() if ln.startswith("rank")]) == 3
    finally:
        cluster.del_interface(h1, "rcx0")
        for h in cluster.hosts:
            cluster.netns_exec(h, ["ip", "route", "add", "default", "via", cluster.bridge_ip])


def test_no_stray_processes(cluster: netns.Cluster) -> None:
    assert cluster.wait_no_strays() == {}
