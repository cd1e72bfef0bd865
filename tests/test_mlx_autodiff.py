"""Differentiable ringcomm collectives on MLX arrays (ringcomm.mlx.autodiff): every rank's
gradient equals the unsharded computation's, at 2, 3 and 4 ranks, through ringcomm's own calls
(the frameworks hook) and the drop-in's entry point; transforms a host call cannot honour
(mx.compile, mx.vmap) and gradients MLX has no rule for raise."""

from __future__ import annotations

import pytest

from tests.harness import run_case

pytestmark = pytest.mark.timeout(200)


@pytest.fixture(autouse=True)
def mlx_is_installed() -> None:
    pytest.importorskip("mlx.core", reason='mlx is not installed: pip install "mlx[cpu]"')


@pytest.mark.parametrize("n", [2, 3, 4])
def test_gradients_equal_the_unsharded_computation(n: int) -> None:
    run_case(n, "mlx_autodiff.py", "mlx_autodiff", timeout=150)
