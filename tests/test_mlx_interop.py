"""MLX interoperability: an MLX program under `ringcomm launch`, a ringcomm program under
`mlx.launch`, both unchanged (mlx-cpu on Linux)."""

from __future__ import annotations

import sys

import pytest

from tests.harness import run_ranks

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def mlx_is_installed() -> None:
    # Each test skips on its own (and fails in CI, see conftest.py): a file that skips as a
    # whole would stop the collection of every other file in CI's strict mode.
    pytest.importorskip("mlx.core", reason='mlx is not installed: pip install "mlx[cpu]"')


def test_mlx_program_runs_under_ringcomm_launch() -> None:
    job = run_ranks(3, "mlx_program.py", timeout=90)
    assert job.returncode == 0, job.stderr[-2000:]
    assert sorted(job.lines("mlx rank")) == [f"mlx rank {r}/3: [6.0, 6.0, 6.0, 6.0]"
                                              for r in range(3)]


def test_ringcomm_program_runs_under_mlx_launch() -> None:
    mlx_launch = [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]
    job = run_ranks(3, "hello.py", timeout=90, launcher=[*mlx_launch, "-n", "3"])
    assert job.returncode == 0, job.stderr[-2000:]
    assert sorted(job.lines("ringcomm rank")) == [f"ringcomm rank {r}/3 ring: 6" for r in range(3)]
