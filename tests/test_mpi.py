"""The MPI backend: the suite's MPI-only modes under mpirun, errors, and the environment.

The conformance suite itself runs on MPI in tests/test_conformance.py (through mpirun and
through ``ringcomm launch --backend mpi``); here are its modes that only MPI has.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest

from ringcomm.backends.mpi import backend as mpi
from ringcomm.backends.mpi import detect as mpi_env
from ringcomm.errors import InitError
from tests import harness
from tests.test_conformance import assert_suite_passed

MPIRUN = harness.mpirun()
needs_mpi = pytest.mark.skipif(harness.mpi_missing() is not None, reason=str(harness.mpi_missing()))


def mpirun_args(mpirun: str, n: int, argv: list[str], openmpi: bool = True) -> list[str]:
    """Return the command line that runs `argv` on `n` ranks of this host."""
    extra = ["--oversubscribe", "--bind-to", "none"] if openmpi else []
    return [mpirun, "-n", str(n), *extra, *argv]


def rank_env(**extra: str) -> dict[str, str]:
    return harness.env(**{"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                          "RINGCOMM_TIMEOUT": "60", **extra})


def run(argv: list[str], timeout: float, environ: dict[str, str]) -> harness.Job:
    # OpenMPI started without mpirun (a singleton: the error cases here) leaves its
    # shared-memory segment behind when the process exits, even after MPI_Finalize: its
    # segments go into a directory of the test's own, removed with it.
    with tempfile.TemporaryDirectory(prefix="ringcomm-ompi-") as backing:
        environ = {**environ, "OMPI_MCA_btl_sm_backing_directory": backing}
        return harness.run(argv, timeout=timeout, environ=environ)


def run_ranks(n: int, args: list[str], timeout: float = 90, **env: str) -> harness.Job:
    assert MPIRUN is not None
    return run(mpirun_args(MPIRUN, n, [sys.executable, *args]), timeout, rank_env(**env))


SUITE = harness.script("conformance.py")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n", [3])
def test_every_multi_piece_path_passes_the_suite_on_small_arrays(n: int) -> None:
    """Every multi-piece path (as used beyond 1 GiB) on small arrays."""
    assert_suite_passed(run_ranks(n, [SUITE, "mpi", "chunked"]), n, "mpi", "chunked")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_a_mismatch_raises_on_every_rank_and_the_group_stays_usable(n: int) -> None:
    assert_suite_passed(run_ranks(n, [SUITE, "mpi", "mismatch"]), n, "mpi", "mismatch")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.skipif(harness.available_gib() < 14, reason="moves > 2 GiB per rank and needs "
                    "about 12 GiB of memory; this machine has less available")
@pytest.mark.timeout(600)
def test_over_2_gib_in_one_call() -> None:
    assert_suite_passed(run_ranks(2, [SUITE, "mpi", "large"], timeout=600), 2, "mpi", "large")


@pytest.mark.mpi
@needs_mpi
def test_the_any_backend_recognises_mpirun() -> None:
    code = ("import ringcomm; g = ringcomm.init(); "
            "assert (g.backend, g.size()) == ('mpi', 2), g; "
            "assert ringcomm.is_available('mpi'); print('ok any rank', g.rank())")
    res = run_ranks(2, ["-c", code], timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok any rank") == 2


@pytest.mark.mpi
@needs_mpi
def test_ringcomm_launch_backend_mpi_gives_any_the_mpi_backend() -> None:
    cmd = harness.launch_argv("--backend", "mpi", "-n", "2", SUITE, "any", "mismatch")
    assert_suite_passed(run(cmd, 90, rank_env()), 2, "mpi", "mismatch")


@pytest.mark.mpi
@needs_mpi
def test_the_deadline_aborts_the_mpi_job() -> None:
    code = ("import numpy as np, ringcomm; g = ringcomm.init(backend='mpi'); "
            "ringcomm.all_sum(np.ones(3)) if g.rank() == 0 else ringcomm.recv(3, 'f8', 0)")
    start = time.monotonic()
    res = run_ranks(2, ["-c", code], timeout=60, RINGCOMM_TIMEOUT="2")
    assert res.returncode != 0
    assert "did not finish within 2 s" in res.stderr, res.stderr[-3000:]
    assert "aborts the MPI job" in res.stderr
    assert time.monotonic() - start < 30


@pytest.mark.mpi
@needs_mpi
def test_a_launcher_size_without_a_matching_mpi_raises() -> None:
    """MPICH's launcher variables with OpenMPI's library: a world of 1 is an error."""
    code = "import ringcomm; ringcomm.init(backend='any')"
    env = rank_env(PMI_SIZE="4", PMI_RANK="0")
    res = run([sys.executable, "-c", code], 60, env)
    assert res.returncode != 0
    assert "InitError" in res.stderr and "PMI_SIZE=4" in res.stderr, res.stderr[-3000:]
    assert "world of 1" in res.stderr and "ringcomm[mpi]" in res.stderr


@pytest.mark.mpi
@needs_mpi
def test_unloadable_mpi_library_says_how_to_fix() -> None:
    code = "import ringcomm; ringcomm.init(backend='mpi')"
    res = run([sys.executable, "-c", code], 60, rank_env(MPI4PY_LIBMPI="/nonexistent/libmpi.so"))
    assert res.returncode != 0
    assert "InitError: mpi backend: mpi4py cannot load an MPI library" in res.stderr, res.stderr
    assert "ringcomm[mpi]" in res.stderr


@pytest.mark.mpi
@needs_mpi
def test_the_mpi_backend_inside_a_ring_launch_raises(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[["127.0.0.1:1"], ["127.0.0.1:2"]]')
    code = "import ringcomm; ringcomm.init(backend='mpi')"
    env = rank_env(RINGCOMM_RANK="1", RINGCOMM_HOSTFILE=str(hostfile))
    res = run([sys.executable, "-c", code], 60, env)
    assert res.returncode != 0
    assert "a ring launcher started 2 ranks" in res.stderr, res.stderr[-3000:]


def test_missing_mpi4py_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)
    with pytest.raises(InitError, match=r"mpi4py is not installed.*ringcomm\[mpi\]"):
        mpi._load()
    assert mpi.is_available() is False


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}, ("OMPI_COMM_WORLD_SIZE", 4)),
        ({"PMI_SIZE": "3", "PMI_RANK": "0"}, ("PMI_SIZE", 3)),
        ({"MV2_COMM_WORLD_SIZE": "2"}, ("MV2_COMM_WORLD_SIZE", 2)),
        ({"PMIX_SIZE": "5"}, ("PMIX_SIZE", 5)),
        ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8"}, ("SLURM_STEP_NUM_TASKS", 8)),
        ({"SLURM_NTASKS": "8"}, None),  # a batch script, not a job step
        ({"PMI_SIZE": "x"}, None),
    ],
)
def test_an_mpi_launchers_variables_give_its_name_and_the_size(
        environ: dict[str, str], expected: tuple[str, int] | None) -> None:
    assert mpi_env.launched_by(environ) == expected
    assert mpi_env.launched_size(environ) == (expected[1] if expected else None)


def test_a_ring_launchers_hostfile_gives_its_variable_and_the_size(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[["10.0.0.1:5000"], ["10.0.0.2:5000"], ["10.0.0.3:5000"]]')
    assert mpi_env.ring_launched_by({}) is None
    assert mpi_env.ring_launched_by({"MLX_HOSTFILE": str(hostfile)}) == ("MLX_HOSTFILE", 3)
    assert mpi_env.ring_launched_by({"RINGCOMM_HOSTFILE": str(tmp_path / "none")}) is None


def test_the_mpirun_command_line_is_a_list() -> None:
    assert mpirun_args("mpirun", 2, ["python", "x.py"]) == [
        "mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", "python", "x.py"]
    assert mpirun_args("mpiexec", 3, ["a"], openmpi=False) == ["mpiexec", "-n", "3", "a"]
