"""``ringcomm check`` against the namespace hosts."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from ringcomm.hosts import preflight as check
from ringcomm.hosts.cli import check_main
from ringcomm.hosts.hostfile import HostEntry
from tests.multihost import netns

pytestmark = pytest.mark.timeout(120)

REPO = str(Path(__file__).resolve().parents[2])


def _hosts(cluster: netns.Cluster, extra: tuple[str, ...] = ()) -> list[HostEntry]:
    return [HostEntry(ssh=ip) for ip in (*cluster.ips, *extra)]


def _no_strays(cluster: netns.Cluster) -> None:
    assert cluster.wait_no_strays() == {}


def test_check_passes_on_three_hosts(cluster: netns.Cluster, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")
    report = check.run_checks(_hosts(cluster), repeat=2, program=str(script), cwd=REPO)
    assert report.ok, check.format_report(report)
    assert report.ranks == 6
    # Every rank was reached from its ring predecessor, across hosts and within one.
    assert sorted((link.src_rank, link.dst_rank) for link in report.links) == [
        (r, (r + 1) % 6) for r in range(6)]
    assert {(link.src_host, link.dst_host) for link in report.links} >= {
        (cluster.ips[0], cluster.ips[1]), (cluster.ips[2], cluster.ips[0])}
    _no_strays(cluster)


def test_check_cli_with_hostfile(cluster: netns.Cluster, tmp_path: Path, capsys) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps({"backend": "ring", "envs": [],
                                    "hosts": [{"ssh": ip, "ips": [ip]} for ip in cluster.ips]}))
    rc = check_main(["--hostfile", str(hostfile), "--cwd", REPO, "-p", "41000"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "ring reachability" in out
    assert "3 host(s), 3 rank(s): no problem(s)" in out
    _no_strays(cluster)


def test_missing_script_on_one_host_is_reported(cluster: netns.Cluster, capsys) -> None:
    h1, h2, h3 = cluster.hosts
    for host in (h1, h2):
        (host.private_dir / "job.py").write_text("print('hi')\n")
    program = str(cluster.private_path / "job.py")
    try:
        rc = check_main(["--hosts", ",".join(cluster.ips), "--cwd", REPO, program])
    finally:
        for host in (h1, h2):
            (host.private_dir / "job.py").unlink()
    out = capsys.readouterr().out
    assert rc == 1
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    expected = (f"FAIL {h3.ip} script: {program} not found; hint: copy it to the same "
                f"path there, or use a shared filesystem")
    assert fails == [expected], out


def test_unreachable_host_fails_fast_and_clearly(cluster: netns.Cluster) -> None:
    start = time.monotonic()
    report = check.run_checks(_hosts(cluster, (cluster.unreachable_ip,)), cwd=REPO,
                              connect_timeout=5)
    elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed
    problems = report.problems()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{cluster.unreachable_ip} ssh: ssh to {cluster.unreachable_ip}")
    assert "hint:" in problems[0]
    assert report.status(cluster.unreachable_ip, "python") is check.Status.SKIP
    assert all(report.status(ip, "ssh") is check.Status.OK for ip in cluster.ips)
    _no_strays(cluster)


def test_wrong_ip_in_hostfile_cannot_be_bound(cluster: netns.Cluster) -> None:
    h1, h2, _ = cluster.hosts
    hosts = [HostEntry(ssh=h1.ip, ips=(h2.ip,)), HostEntry(ssh=h2.ip, ips=(h2.ip,))]
    report = check.run_checks(hosts, cwd=REPO)
    text = check.format_report(report)
    assert not report.ok
    assert report.status(h1.ip, "bind") is check.Status.FAIL, text
    assert "EADDRNOTAVAIL" in text and f"is not an address of {h1.ip}" in text


def test_blocked_port_is_reported_in_the_matrix(cluster: netns.Cluster) -> None:
    h1, h2, _ = cluster.hosts
    # Host 2's ring port is only on its loopback, so host 1 cannot reach it.
    hosts = [HostEntry(ssh=h1.ip, ips=(h1.ip,)), HostEntry(ssh=h2.ip, ips=("127.0.0.1",))]
    report = check.run_checks(hosts, cwd=REPO, starting_port=42000)
    text = check.format_report(report)
    assert not report.ok
    bad = [link for link in report.links if not link.ok]
    assert [(b.src_host, b.dst_host) for b in bad] == [(h1.ip, h2.ip)], text
    assert "ECONNREFUSED" in text


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not installed")
def test_mpi_backend_finds_mpirun(cluster: netns.Cluster) -> None:
    report = check.run_checks(_hosts(cluster), backend="mpi", cwd=REPO)
    assert report.ok, check.format_report(report)
    assert all(report.status(ip, "mpirun") is check.Status.OK for ip in cluster.ips)


def test_missing_cwd_on_one_host(cluster: netns.Cluster) -> None:
    h1, _, h3 = cluster.hosts
    (h1.private_dir / "work").mkdir(exist_ok=True)
    (cluster.hosts[1].private_dir / "work").mkdir(exist_ok=True)
    cwd = str(cluster.private_path / "work")
    try:
        report = check.run_checks(_hosts(cluster), cwd=cwd, python=sys.executable)
    finally:
        for host in cluster.hosts[:2]:
            (host.private_dir / "work").rmdir()
    problems = report.problems()
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{h3.ip} python: cannot enter {cwd!r}: ")
    assert problems[0].endswith("hint: create the directory there or pass --cwd")
