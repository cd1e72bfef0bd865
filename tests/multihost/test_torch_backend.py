"""The torch backend across namespace hosts: ops against a reference and DDP, two ways to start.

tests/ranks/torch_hosts.py checks all_reduce (SUM, AVG, MAX; small and pipelined), all_gather of
unequal sizes, all_to_all_single with splits, broadcast, send/recv, and 3 DDP steps whose
weights equal one process's training on every rank's batch, on every rank. Here it runs

- with torch's variables set by hand (MASTER_ADDR = host 1's address) and one rank on each of
  two hosts, started over ssh: ringcomm's ranks meet through torch's store and cross the link;
- under ``ringcomm launch --hosts`` with two ranks on each host: torch's env:// store is served
  by rank 0 on host 1, shared memory inside a host and TCP across.
"""

from __future__ import annotations

import random
import shlex
import sys

import pytest

from tests import harness
from tests.multihost import netns

pytestmark = pytest.mark.timeout(150)


def _ok(out: str, p: int, cluster: netns.Cluster) -> list[list[str]]:
    rows = sorted(line.split() for line in out.splitlines() if line.startswith("ok hosts rank "))
    assert [row[3:6] for row in rows] == [[str(r), "of", str(p)] for r in range(p)], out
    assert {row[7] for row in rows} == {h.hostname for h in cluster.hosts[:2]}, rows
    return rows


def test_torch_variables_one_rank_on_each_of_two_hosts(cluster: netns.Cluster) -> None:
    port = random.randrange(20000, 30000)  # the hosts are fresh namespaces: every port is free
    base = [f"PYTHONPATH={harness.ROOT}", f"MASTER_ADDR={cluster.ips[0]}",
            f"MASTER_PORT={port}", "WORLD_SIZE=2", "OMP_NUM_THREADS=1"]
    commands = []
    for rank, host in enumerate(cluster.hosts[:2]):
        remote = ["env", *base, f"RANK={rank}", sys.executable, harness.script("torch_hosts.py")]
        commands.append(([str(cluster.bin_dir / "ssh"), host.ip, shlex.join(remote)],
                         cluster.env(harness.env())))
    try:
        jobs = harness.run_together(commands, timeout=110, what="the ssh sessions")
    finally:
        harness.assert_none_survive(pids=cluster.strays, within=10.0, what="the job on the hosts")
    for job in jobs:
        assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    rows = _ok("".join(job.stdout for job in jobs), 2, cluster)
    assert all(row[9].startswith("tcp") for row in rows), rows  # across the link, not shm


def test_ringcomm_launch_two_ranks_on_each_of_two_hosts(cluster: netns.Cluster) -> None:
    argv = harness.launch_argv("--env", f"PYTHONPATH={harness.ROOT}", "--env", "OMP_NUM_THREADS=1",
                               "--hosts", ",".join(cluster.ips[:2]), "-n", "2", "--timeout",
                               "110", "--", sys.executable, harness.script("torch_hosts.py"))
    try:
        r = harness.run(argv, timeout=120, environ=cluster.env(harness.env()))
    finally:
        harness.assert_none_survive(pids=cluster.strays, within=10.0, what="the job on the hosts")
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    rows = _ok(r.stdout, 4, cluster)
    assert all(row[9].startswith("shm+tcp-hierarchical") for row in rows), rows
