"""``ringcomm launch`` across the namespace hosts: ring jobs, failures, kill -9, MPI."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests import harness
from tests.multihost import netns

pytestmark = pytest.mark.timeout(120)


def _launch_argv(*args: str) -> list[str]:
    return harness.launch_argv("--env", f"PYTHONPATH={harness.ROOT}", *args)


def _env(cluster: netns.Cluster) -> dict[str, str]:
    return cluster.env(harness.env())


def _run(cluster: netns.Cluster, *args: str, timeout: float = 60) -> harness.Job:
    """Run ``ringcomm launch ARGS`` across the hosts; prove nothing of it survives here."""
    return harness.run(_launch_argv(*args), timeout=timeout, environ=_env(cluster))


def _no_strays(cluster: netns.Cluster, within: float = 5.0) -> None:
    """Prove that nothing but the sshd listeners runs on any host."""
    harness.assert_none_survive(pids=cluster.strays, within=within, what="the job on the hosts")


def _start_hang(cluster: netns.Cluster, tmp_path: Path) -> harness.Started:
    """Start a job whose ranks hang on every host; return once each rank wrote its pid file."""
    job = harness.Started(_launch_argv("--hosts", ",".join(cluster.ips), harness.script("behave.py"),
                                       "hang", str(tmp_path), "child"), environ=_env(cluster))
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("pid?"))) < 3:
        assert time.monotonic() < deadline, "ranks did not start"
        time.sleep(0.1)
    return job


def _ok_lines(out: str) -> list[str]:
    return sorted(line for line in out.splitlines() if line.startswith("ok "))


def test_ring_job_with_hosts(cluster: netns.Cluster) -> None:
    r = _run(cluster, "--hosts", ",".join(cluster.ips), "-n", "2", "--connections-per-ip", "2",
             harness.script("ring_sum.py"))
    assert r.returncode == 0, r.stderr
    assert len(_ok_lines(r.stdout)) == 6 and all(" 6 " in x for x in _ok_lines(r.stdout))
    _no_strays(cluster)


@pytest.mark.parametrize("form", ["list", "object"])
def test_ring_job_with_hostfile(cluster: netns.Cluster, tmp_path: Path, form: str) -> None:
    hosts = [{"ssh": ip, "ips": [ip]} for ip in cluster.ips]
    data = hosts if form == "list" else {"backend": "ring", "envs": ["EXTRA=1"], "hosts": hosts}
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(data))
    r = _run(cluster, "--hostfile", str(hostfile), "-n", "2", harness.script("ring_sum.py"))
    assert r.returncode == 0, r.stderr
    assert len(_ok_lines(r.stdout)) == 6
    _no_strays(cluster)


def test_failing_rank_ends_every_host(cluster: netns.Cluster, tmp_path: Path) -> None:
    start = time.monotonic()
    r = _run(cluster, "--hosts", ",".join(cluster.ips), "-n", "2", "--env", "EXPECT_RANKS=6",
             harness.script("behave.py"), "exit3", str(tmp_path), "child")
    assert r.returncode == 3, r.stderr
    assert f"rank 1 failed first: exit code 3 (host {cluster.ips[0]}" in r.stderr
    assert time.monotonic() - start < 40
    _no_strays(cluster)


def test_kill9_of_launcher_leaves_no_remote_rank(cluster: netns.Cluster, tmp_path: Path) -> None:
    with _start_hang(cluster, tmp_path) as job:
        assert all(cluster.stray_pids(h) for h in cluster.hosts)
        job.proc.kill()
        job.proc.wait(timeout=10)
        _no_strays(cluster, within=5.0)
        harness.assert_none_survive(job.marker, what="the killed launcher")


def test_unreachable_host_fails_fast_and_clearly(cluster: netns.Cluster) -> None:
    start = time.monotonic()
    r = _run(cluster, "--hosts", f"{cluster.ips[0]},{cluster.unreachable_ip}",
             "--", "sleep", "30", timeout=30)
    assert time.monotonic() - start < 10 + 5  # ssh ConnectTimeout is 5 s; stopping the rest
    assert r.returncode == 255, r.stderr
    assert "rank 1 failed first" in r.stderr and f"ssh to {cluster.unreachable_ip}" in r.stderr
    _no_strays(cluster)


def test_mpi_backend_across_hosts(cluster: netns.Cluster) -> None:
    pytest.importorskip("mpi4py")
    r = _run(cluster, "--backend", "mpi", "--hosts", ",".join(cluster.ips), "--",
             sys.executable, "-c",
             "import mpi4py.MPI as M; c = M.COMM_WORLD; "
             "print('ok', c.Get_rank(), c.Get_size(), c.allreduce(1))")
    assert r.returncode == 0, r.stderr
    assert _ok_lines(r.stdout) == [f"ok {i} 3 3" for i in range(3)]
    _no_strays(cluster)


def test_interrupt_ends_every_remote_rank(cluster: netns.Cluster, tmp_path: Path) -> None:
    with _start_hang(cluster, tmp_path) as job:
        job.send_signal(signal.SIGINT)
        r = job.wait(timeout=20)
        assert r.returncode == 130, r.stderr
        _no_strays(cluster)


def test_missing_python_on_host_is_explained(cluster: netns.Cluster) -> None:
    r = _run(cluster, "--hosts", cluster.ips[0], "--python", "/no/such/python", "--", "true")
    assert r.returncode == 127, r.stderr
    assert "'/no/such/python' was not found on" in r.stderr and "--python" in r.stderr
    _no_strays(cluster)
