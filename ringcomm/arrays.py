"""Array-type adapters and the dtype table.

Every collective turns its argument into a C-contiguous NumPy array, runs on
that, and hands the result back in the caller's array type: NumPy in, NumPy
out; a torch tensor in, a tensor of the same dtype and device out.

- NumPy, and anything with ``__array__``, ``__dlpack__`` or the buffer
  protocol: a view when the memory allows, NumPy out.
- torch CPU tensors: a zero-copy view (``requires_grad`` tensors are
  detached); bfloat16 travels as its bits through ``ml_dtypes.bfloat16``.
- JAX arrays: a view of the host buffer; the result is put on the input's
  device with the input's dtype.
- MLX arrays: a read-only view on the way in (no copy), one copy back (bfloat16 as its bits).
- GPU arrays (CUDA torch tensors, CuPy) are staged through host memory: one
  device-to-host copy on the way in and one host-to-device copy onto the
  input's device on the way out. No GPU-direct transport exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .signature import ReduceOp

__all__ = ["Adapted", "adapt", "bfloat16", "check_dtype", "dtype_code", "dtype_from_code"]

try:  # bfloat16 is optional: it needs ml_dtypes
    from ml_dtypes import bfloat16 as _bf16

    bfloat16: np.dtype | None = np.dtype(_bf16)
except ImportError:  # pragma: no cover - depends on the environment
    bfloat16 = None

# Wire codes: stable numbers, so ranks agree on a dtype without sending its name.
_CODES: list[np.dtype] = [
    np.dtype(t)
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64,
        np.uint8, np.uint16, np.uint32, np.uint64,
        np.float16, np.float32, np.float64, np.complex64, np.complex128,
    )
]
if bfloat16 is not None:
    _CODES.append(bfloat16)
_CODE_OF = {dt: i + 1 for i, dt in enumerate(_CODES)}


def dtype_code(dt: np.dtype) -> int:
    """Return the wire code of a supported dtype."""
    return _CODE_OF[np.dtype(dt)]


def dtype_from_code(code: int) -> np.dtype | None:
    """Return the dtype of a wire code, or None for an unknown code."""
    return _CODES[code - 1] if 0 < code <= len(_CODES) else None


def check_dtype(dt: np.dtype, op: str, reduce: ReduceOp | None = None) -> None:
    """Raise TypeError unless `op` (reducing by `reduce`, if it reduces) supports arrays of
    dtype `dt`."""
    if not isinstance(dt, np.dtype):
        dt = np.dtype(dt)
    if dt not in _CODE_OF:
        supported = ", ".join(str(d) for d in _CODES)
        raise TypeError(f"{op}: unsupported dtype {np.dtype(dt)!s}; supported: {supported}")
    if reduce is not None and (why := reduce.refuses(dt)) is not None:
        raise TypeError(f"{op}({reduce.value}): no reduction of {dt} arrays: {why}")


class Adapted(NamedTuple):
    """A NumPy view of a caller's array and the way back to the caller's type (one per call)."""

    array: np.ndarray
    wrap: Callable[[np.ndarray], Any]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _c_order(a: np.ndarray) -> np.ndarray:
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _need_bfloat16(kind: str) -> np.dtype:
    """Return NumPy's bfloat16 dtype, or raise saying how to get it."""
    if bfloat16 is None:
        raise TypeError(f"bfloat16 {kind} need ml_dtypes; pip install ml_dtypes")
    return bfloat16


def _torch_cpu(r: np.ndarray) -> Any:
    """Wrap a result as a CPU tensor, sharing its memory (the common case: no closure)."""
    import torch

    return torch.from_numpy(_c_order(r))


def _from_torch(x: Any) -> Adapted:
    import torch

    # A tensor with requires_grad (or a parent that has it) cannot become NumPy: detached
    # here (the frameworks hook has already taken the calls that need its graph). Conjugate
    # and negative views (complex only) are resolved into memory of their own.
    t = x.detach() if x.requires_grad else x
    dtype = t.dtype
    if dtype.is_complex and (t.is_conj() or t.is_neg()):
        t = t.resolve_conj().resolve_neg()
    cpu = t.is_cpu
    if not cpu:  # staged through host memory: one copy here, one back in wrap
        device = t.device
        t = t.cpu()
    if dtype == torch.bfloat16:
        a = t.view(torch.int16).numpy().view(_need_bfloat16("tensors"))
    else:
        try:
            a = t.numpy()
        except TypeError as e:
            raise TypeError(f"torch dtype {dtype} has no NumPy equivalent; cast it first") from e
        if cpu:
            return Adapted(a, _torch_cpu)

    def wrap(r: np.ndarray) -> Any:
        r = _c_order(r)
        if dtype == torch.bfloat16:
            out = torch.from_numpy(r.view(np.int16)).view(torch.bfloat16)
        else:
            out = torch.from_numpy(r)
        return out if cpu else out.to(device)

    return Adapted(a, wrap)


def _from_mlx(x: Any) -> Adapted:
    import mlx.core as mx

    dtype = x.dtype
    # Zero copies on the way in: MLX's buffer protocol hands out its (evaluated) memory. The
    # view is taken of a private alias of x, not of x: `x[i] = v` replaces x's descriptor, and
    # an old buffer that nothing else holds may be donated to the next op's output; the alias
    # holds it, so the view never sees it reused. Read-only: inputs are never written.
    if dtype == mx.bfloat16:  # no PEP 3118 format for bfloat16: its bits as uint16
        a = np.asarray(x.view(mx.uint16)).view(_need_bfloat16("arrays"))
    else:
        a = np.asarray(x.reshape(x.shape))
    a.flags.writeable = False

    def wrap(r: np.ndarray) -> Any:
        # One copy on the way back: MLX 0.32 adopts no foreign memory (mx.array and
        # mx.from_dlpack copy), so the result never aliases a buffer of ringcomm's pool.
        if dtype == mx.bfloat16:
            return mx.array(_c_order(r).view(np.uint16)).view(mx.bfloat16)
        return mx.array(r, dtype=dtype)  # without dtype, float64 would come back float32

    return Adapted(a, wrap)


def _from_jax(x: Any) -> Adapted:
    import jax

    try:
        a = np.asarray(x)
    except jax.errors.TracerArrayConversionError as e:  # the hook takes tracers first
        raise TypeError(
            "expecting a concrete JAX array, got a tracer outside ringcomm's JAX collectives "
            "(ringcomm.jax.collectives)"
        ) from e
    devices = x.devices() if hasattr(x, "devices") else set()
    device = next(iter(devices)) if len(devices) == 1 else None
    dtype = x.dtype

    def wrap(r: np.ndarray) -> Any:
        return jax.device_put(np.asarray(r, dtype=dtype), device)

    return Adapted(a, wrap)


def _from_cupy(x: Any) -> Adapted:
    import cupy

    device = x.device
    a = cupy.asnumpy(x)  # device to host: the one copy on the way out

    def wrap(r: np.ndarray) -> Any:
        with device:  # host to device: the one copy on the way back, onto x's device
            return cupy.asarray(r)

    return Adapted(a, wrap)


def adapt(x: Any) -> Adapted:
    """Return a NumPy view of `x` and how to wrap a result in `x`'s array type."""
    if isinstance(x, np.ndarray):
        return Adapted(x, _identity)
    if isinstance(x, np.generic):
        return Adapted(np.asarray(x), _identity)
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return _from_torch(x)
    if module == "mlx":
        return _from_mlx(x)
    if module in ("jax", "jaxlib"):
        return _from_jax(x)
    if module == "cupy":
        return _from_cupy(x)
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return Adapted(np.asarray(x), _identity)
    if hasattr(x, "__dlpack__"):
        return Adapted(np.from_dlpack(x), _identity)
    try:
        return Adapted(np.asarray(memoryview(x)), _identity)
    except TypeError:
        pass
    if isinstance(x, (bool, int, float, complex, list, tuple)):
        return Adapted(np.asarray(x), _identity)
    raise TypeError(
        f"expecting an array (NumPy, torch, JAX, MLX, or anything with __array__, "
        f"__dlpack__ or the buffer protocol), got {type(x).__name__}"
    )
