"""The drop-in for mx.distributed: MLX's distributed layers and utilities, unchanged, give the
same results and gradients on ringcomm (after ringcomm.mlx.install()) as on MLX's own ring
backend, in one test; and an MLX program on MLX's MPI backend under `ringcomm launch`."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from tests import harness
from tests.harness import run_ranks

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def mlx_is_installed() -> None:
    pytest.importorskip("mlx.core", reason='mlx is not installed: pip install "mlx[cpu]"')


def _layers(n: int, which: str) -> dict[int, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory(prefix="ringcomm-mlx-") as out:
        job = run_ranks(n, "mlx_layers.py", which, out, timeout=150)
        assert job.returncode == 0, f"{which}: exit {job.returncode}\n{job.stderr[-3000:]}"
        results = {}
        for r in range(n):
            with open(os.path.join(out, f"rank{r}.json")) as f:
                results[r] = json.load(f)
        return results


@pytest.mark.parametrize("n", [2, 4])
def test_mlx_layers_match_mlx_ring(n: int) -> None:
    mlx_ring, dropin = _layers(n, "mlx"), _layers(n, "ringcomm")
    for r in range(n):
        assert mlx_ring[r].keys() == dropin[r].keys()
        assert len(dropin[r]) > 50
        for case, want in mlx_ring[r].items():
            got = dropin[r][case]
            assert np.allclose(got, want, rtol=1e-4, atol=1e-5), (
                f"rank {r} {case}: drop-in {got[:8]} vs MLX's ring {want[:8]}")


@pytest.mark.mpi
def test_mlx_mpi_program_under_ringcomm_launch() -> None:
    missing = harness.mpi_missing()
    assert missing is None, missing
    job = run_ranks(2, "mlx_mpi_program.py", timeout=120,
                    launcher=harness.launch_argv("--backend", "mpi", "-n", "2"))
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    assert sorted(job.lines("mlx mpi rank")) == [
        f"mlx mpi rank {r}/2: [3.0, 3.0, 3.0] grad [1.0, 1.0, 1.0]" for r in range(2)]
