"""Every collective on torch, MLX and JAX arrays returns the caller's type, dtype and device."""

from __future__ import annotations

import numpy as np
import pytest

import ringcomm
from tests.harness import run_case
from tests.ranks.training import LIBRARIES, case_interop

ONES = np.arange(12, dtype=np.float32).reshape(4, 3)


def _size_one_collectives(x):
    """Yield (op name, result, expected NumPy values) of every collective at size 1."""
    yield "all_sum", ringcomm.all_sum(x), ONES
    yield "all_max", ringcomm.all_max(x), ONES
    yield "all_min", ringcomm.all_min(x), ONES
    yield "all_gather", ringcomm.all_gather(x), ONES
    yield "sum_scatter", ringcomm.sum_scatter(x), ONES
    yield "broadcast", ringcomm.broadcast(x, 0), ONES
    yield "average_gradients", ringcomm.average_gradients([x])[0], ONES


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
@pytest.mark.parametrize("grad_parent", [False, True])
def test_torch_round_trip(dtype, grad_parent):
    torch = pytest.importorskip("torch")
    base = torch.from_numpy(ONES.copy()).to(getattr(torch, dtype))
    x = base.requires_grad_() * 1 if grad_parent else base  # a non-leaf with a grad history
    for op, got, want in _size_one_collectives(x):
        assert isinstance(got, torch.Tensor), op
        assert got.dtype == x.dtype and got.device == x.device, op
        # A tensor with a grad history keeps it through every collective (the frameworks
        # hook); average_gradients at size 1 returns its input as it is.
        assert got.requires_grad == grad_parent, op
        np.testing.assert_array_equal(got.detach().float().numpy(), want, err_msg=op)
        if grad_parent and op in ("all_sum", "all_gather", "sum_scatter", "broadcast"):
            (g,) = torch.autograd.grad(got.float().sum(), base, retain_graph=True)  # the identity
            np.testing.assert_array_equal(g.float().numpy(), np.ones_like(ONES), err_msg=op)


def test_torch_result_is_new_memory_and_non_contiguous_input_works():
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(ONES.copy()).t()  # non-contiguous
    got = ringcomm.all_sum(x)
    got += 1
    np.testing.assert_array_equal(x.numpy(), ONES.T)
    for dtype in (torch.float32, torch.bfloat16):
        assert ringcomm.all_sum(torch.tensor(2.5, dtype=dtype)).shape == ()


def test_torch_dtype_without_numpy_equivalent():
    torch = pytest.importorskip("torch")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    with pytest.raises(TypeError, match="has no NumPy equivalent"):
        ringcomm.all_sum(torch.zeros(2, dtype=torch.float8_e4m3fn))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int32"])
def test_mlx_round_trip(dtype):
    mx = pytest.importorskip("mlx.core")
    x = mx.array(ONES).astype(getattr(mx, dtype))
    for op, got, want in _size_one_collectives(x) if dtype != "int32" else []:
        assert isinstance(got, mx.array) and got.dtype == x.dtype, op
        np.testing.assert_array_equal(np.array(got.astype(mx.float32)), want, err_msg=op)
    if dtype == "int32":
        got = ringcomm.all_max(x)
        assert got.dtype == mx.int32 and np.array(got).tolist() == ONES.tolist()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_jax_round_trip(dtype):
    jnp = pytest.importorskip("jax.numpy", reason="jax is optional: pip install jax jaxlib")
    x = jnp.asarray(ONES, dtype=getattr(jnp, dtype))
    for op, got, want in _size_one_collectives(x):
        assert type(got) is type(x) and got.dtype == x.dtype, op
        assert got.devices() == x.devices(), op
        np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), want, err_msg=op)


def test_jax_collectives_run_inside_jit():
    jax = pytest.importorskip("jax", reason="jax is optional: pip install jax jaxlib")
    got = jax.jit(lambda a: ringcomm.all_sum(a * 2))(jax.numpy.ones(2))  # a tracer inside
    assert np.asarray(got).tolist() == [2.0, 2.0]


# The array libraries the interop case must exercise, each in every variant (bfloat16 through
# ml_dtypes): a library that is missing skips these tests (fails them in CI, see conftest.py),
# and one that fails to import in a rank fails it; none is dropped quietly.
REQUIRED = ("torch", "mlx.core", "jax", "ml_dtypes")
VARIANTS = ["torch", "torch-grad", "torch-bf16", "mlx", "mlx-bf16", "jax", "jax-bf16"]


@pytest.fixture
def every_library() -> None:
    for name in REQUIRED:
        pytest.importorskip(name)


def test_every_library_in_process(every_library):
    assert LIBRARIES == ("torch", "mlx", "jax")
    assert case_interop() == VARIANTS  # the in-rank case, at size 1


@pytest.mark.timeout(150)
def test_every_library_at_size_two(every_library):
    # The case exercises every library of LIBRARIES (torch, mlx, jax) unless told otherwise.
    job = run_case(2, "training.py", "interop", timeout=120, RINGCOMM_TIMEOUT="60")
    assert sorted(job.lines("exercised ")) == [f"exercised rank {r}: {' '.join(VARIANTS)}"
                                               for r in range(2)], job.stdout


def test_zero_d_arrays_keep_their_shape():
    made = []
    torch = pytest.importorskip("torch")
    made += [torch.tensor(2.5), torch.tensor(2.5, dtype=torch.bfloat16)]
    mx = pytest.importorskip("mlx.core")
    made += [mx.array(2.5), mx.array(2.5, dtype=mx.bfloat16)]
    for x in made:
        for op in (ringcomm.all_sum, ringcomm.all_max, ringcomm.broadcast):
            got = op(x)
            assert type(got) is type(x) and got.dtype == x.dtype and tuple(got.shape) == (), (x, op)


class _FakeDevice:
    """A CuPy device stand-in: a context manager that records entries."""

    def __init__(self) -> None:
        self.entered = 0

    def __enter__(self):
        self.entered += 1

    def __exit__(self, *exc):
        return False


def test_cupy_is_staged_through_host_with_one_copy_each_way(monkeypatch):
    import sys
    import types

    copies = {"to_host": 0, "to_device": 0}
    device = _FakeDevice()

    class FakeCupyArray:
        def __init__(self, host: np.ndarray) -> None:
            self.host, self.device = host, device

    FakeCupyArray.__module__ = "cupy._core.core"

    def asnumpy(x):
        copies["to_host"] += 1
        return x.host.copy()

    def asarray(a):
        copies["to_device"] += 1
        return FakeCupyArray(np.array(a))

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asnumpy=asnumpy, asarray=asarray))
    got = ringcomm.all_sum(FakeCupyArray(ONES.copy()))
    assert isinstance(got, FakeCupyArray) and copies == {"to_host": 1, "to_device": 1}
    assert device.entered == 1  # the result lands on the input's device
    np.testing.assert_array_equal(got.host, ONES)


def test_torch_cuda_round_trip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = torch.ones(5, device="cuda", dtype=torch.bfloat16)
    got = ringcomm.all_sum(x)
    assert got.device == x.device and got.dtype == x.dtype
    assert ringcomm.average_gradients([x])[0].device == x.device
