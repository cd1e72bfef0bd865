"""Every reduce op (sum, avg, prod, max, min, band, bor, bxor), complex max/min in NumPy's
order, the variable-size collectives and groups made by their members alone: each rank checks
every result against a single-process reference (tests/ranks/reduce_ops.py)."""

from __future__ import annotations

import re

import pytest

from tests import harness
from tests.test_conformance import ROOT_ENV, mpi_launcher


def _passed(job: harness.Job, n: int, backend: str) -> None:
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-4000:]}"
    counts = set()
    for r in range(n):
        m = re.search(rf"ok all rank {r} \((\d+) cases, backend {backend}\)", job.stdout)
        assert m, f"rank {r} did not finish:\n{job.stdout}\n{job.stderr[-3000:]}"
        counts.add(int(m.group(1)))
    assert counts == {475}, counts  # every case ran on every rank


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.timeout(200)
def test_every_reduce_op_and_uneven_collective_on_one_host(n: int) -> None:
    _passed(harness.run_ranks(n, "reduce_ops.py", "all", timeout=180), n, "ring")


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.timeout(200)
def test_the_same_over_the_tcp_ring(n: int) -> None:
    # Two ranks take the core's pair exchange, three the ring's Python loop.
    _passed(harness.run_ranks(n, "reduce_ops.py", "all", timeout=180, RINGCOMM_TRANSPORT="tcp"),
            n, "ring")


@pytest.mark.timeout(200)
def test_the_same_on_two_hosts_of_two_ranks() -> None:
    ips = ["127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"]
    jobs = harness.run_direct(4, "reduce_ops.py", "all", timeout=180, ips=ips)
    for r, job in enumerate(jobs):
        assert job.returncode == 0, f"rank {r}: exit {job.returncode}\n{job.stderr[-3000:]}"
        assert re.search(rf"ok all rank {r} \(475 cases, backend ring\)", job.stdout), job.stdout


@pytest.mark.mpi
@pytest.mark.timeout(200)
def test_the_same_on_mpi() -> None:
    # Also: OpenMPI's vectorised int8/int16 sums saturate; the backend's own op wraps.
    _passed(harness.run_ranks(3, "reduce_ops.py", "all", launcher=mpi_launcher(3), timeout=180,
                              **ROOT_ENV), 3, "mpi")
