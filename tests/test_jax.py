"""JAX collectives: eager, under grad/vjp/jvp and inside jax.jit, each equal to the unsharded
computation at 2, 3 and 4 ranks (JAX's transposes), a tensor-parallel MLP's gradients equal the
unsharded MLP's, jitted calls keep their order, vmap and pmap raise
(tests/ranks/autodiff_jax.py)."""

from __future__ import annotations

import pytest

from tests.harness import run_case

jax = pytest.importorskip("jax", reason="jax not installed: pip install jax")


@pytest.mark.parametrize("n", [2, 3, 4])
def test_jax_collectives_eager_jitted_and_differentiated_equal_the_unsharded_computation(n):
    run_case(n, "autodiff_jax.py", "jax", timeout=240)


def test_a_concrete_array_takes_the_plain_path():
    from ringcomm.jax import collectives

    assert collectives.dispatch("all_sum", jax.numpy.ones(3), (), {}) is NotImplemented
