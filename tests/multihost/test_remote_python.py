"""What a new user runs on several hosts: `python script.py` from a virtual environment, each
host its own node, and MPI across hosts doing real collectives.

The machine's default python has ringcomm installed (CI installs it there), which would hide a
launcher that runs a bare `python` as found on the remote PATH: so the job here launches from a
virtual environment made for the test, and every rank reports `sys.executable`.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests import harness
from tests.multihost import netns
from tests.test_conformance import assert_suite_passed, paths_taken

pytestmark = pytest.mark.timeout(240)

REPORT = ("import os, socket, sys, ringcomm, numpy as np; w = ringcomm.init(); "
          "s = ringcomm.all_sum(np.ones(1))[0]; "
          "print('ok', w.rank(), w.size(), int(s), socket.gethostname(), sys.executable, "
          "flush=True)")


def _env(cluster: netns.Cluster) -> dict[str, str]:
    return cluster.env(harness.env())


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment of the user's, seeing the machine's packages (numpy, ringcomm)."""
    where = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(where)
    python = where / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import ringcomm, numpy"], capture_output=True,
                           text=True, timeout=60, env=harness.env())
    assert probe.returncode == 0, probe.stderr
    return where


@pytest.mark.parametrize("how", ["script", "python", "module"])
def test_python_script_on_remote_hosts_runs_with_the_launching_venv(
        cluster: netns.Cluster, user_venv: Path, tmp_path: Path, how: str) -> None:
    python = user_venv / "bin" / "python"
    prog = tmp_path / "report.py"
    prog.write_text(REPORT.replace("; ", "\n"))
    (tmp_path / "reportmod.py").write_text(REPORT.replace("; ", "\n"))
    program = {"script": [str(prog)], "python": ["python", str(prog)],
               "module": ["-m", "reportmod"]}[how]
    argv = [str(python), "-m", "ringcomm", "launch", "--hosts", ",".join(cluster.ips),
            "--cwd", str(tmp_path), "--env", f"PYTHONPATH={harness.ROOT}:{tmp_path}", *program]
    r = harness.run(argv, timeout=120, environ=_env(cluster))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(line.split() for line in r.stdout.splitlines() if line.startswith("ok "))
    assert [row[1:4] for row in rows] == [[str(i), "3", "3"] for i in range(3)], r.stdout
    assert {row[5] for row in rows} == {str(python)}, rows  # not the remote PATH's python
    assert sorted(row[4] for row in rows) == [h.hostname for h in cluster.hosts]
    harness.assert_none_survive(pids=cluster.strays, within=5.0, what="the job on the hosts")


def test_dry_run_shows_the_resolved_interpreter(cluster: netns.Cluster, user_venv: Path) -> None:
    python = user_venv / "bin" / "python"
    argv = [str(python), "-m", "ringcomm", "launch", "--dry-run", "--hosts",
            ",".join(cluster.ips), "python", "train.py"]
    r = harness.run(argv, timeout=60, environ=_env(cluster))
    assert r.returncode == 0, r.stderr
    assert f"program: {python} " in r.stdout, r.stdout


def test_mpi_across_hosts_runs_the_conformance_suite(cluster: netns.Cluster) -> None:
    missing = harness.mpi_missing()
    if missing:
        pytest.skip(missing)
    argv = harness.launch_argv("--env", f"PYTHONPATH={harness.ROOT}", "--backend", "mpi",
                               "--hosts", ",".join(cluster.ips), "--", sys.executable,
                               harness.script("conformance.py"), "mpi")
    r = harness.run(argv, timeout=200, environ=_env(cluster))
    # Every rank passed exactly the cases the suite's tables call for at 3 ranks on MPI.
    assert_suite_passed(r, 3, "mpi")
    harness.assert_none_survive(pids=cluster.strays, within=5.0, what="the job on the hosts")


def test_the_ring_across_two_hosts_of_two_ranks_is_hierarchical_and_passes_the_suite(
        cluster: netns.Cluster, tmp_path: Path) -> None:
    # Two ranks per host: shared memory inside each host, one ring across hosts per local rank.

    hosts = ",".join(cluster.ips[:2])
    argv = harness.launch_argv("--env", f"PYTHONPATH={harness.ROOT}", "--env",
                               f"RINGCOMM_TRACE={tmp_path}", "--hosts", hosts, "-n", "2", "--",
                               sys.executable, harness.script("conformance.py"), "ring")
    r = harness.run(argv, timeout=220, environ=_env(cluster))
    assert_suite_passed(r, 4, "ring")
    # all_sum over both hosts is hierarchical; the other collectives check the call on the host
    # and across, then take the flat ring, whose neighbours on one host share a link (mixed);
    # a group split one rank per host is a TCP ring; send/recv inside a host take shared memory.
    paths = paths_taken(tmp_path, 4)
    assert {"shm+tcp-hierarchical", "mixed-latency", "mixed-pipeline", "tcp-latency"} <= paths, \
        paths
    assert paths_taken(tmp_path, 4, p2p=True) == {"shm-p2p", "tcp-p2p"}
    harness.assert_none_survive(pids=cluster.strays, within=5.0, what="the job on the hosts")
