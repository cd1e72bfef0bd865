"""Differentiable torch collectives: gradients through every collective equal the unsharded
computation's at 2, 3 and 4 ranks (autograd, torch.func.grad and jvp), a tensor-parallel MLP's
gradients equal the unsharded MLP's, refused transforms raise, torch.compile gives the eager
result (tests/ranks/autodiff_torch.py)."""

from __future__ import annotations

import sys

import pytest

from tests.harness import run_case

torch = pytest.importorskip("torch", reason="torch not installed")


@pytest.mark.parametrize("n, case", [(2, "compile"), (3, "grads"), (4, "grads")])
def test_gradients_through_every_torch_collective_equal_the_unsharded_computation(n, case):
    run_case(n, "autodiff_torch.py", case, timeout=240)


def test_a_plain_tensor_takes_the_plain_path_without_torch_distributed():
    import torch.distributed as dist

    from ringcomm.torch import autograd

    assert autograd.dispatch("all_sum", torch.ones(3), (), {}) is NotImplemented
    with torch.no_grad():
        assert autograd.dispatch("all_sum", torch.ones(3, requires_grad=True), (), {}) \
            is NotImplemented
    assert not dist.is_initialized()


def test_the_tensor_parallel_example_follows_the_unsharded_loss_curve():
    from tests.harness import ROOT, env, launch_argv, run

    job = run([*launch_argv("-n", "3"), sys.executable,
               str(ROOT / "examples" / "tensor_parallel_torch.py"), "--steps", "6"],
              timeout=120, environ=env())
    assert job.returncode == 0, job.stdout + job.stderr[-3000:]
    assert "largest difference between the curves" in job.stdout, job.stdout
