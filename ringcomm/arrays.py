"""Array-type adapters and the dtype table.

Every collective turns its argument into a C-contiguous NumPy array, runs on
that, and hands the result back in the caller's array type: NumPy in, NumPy
out; a torch tensor in, a tensor of the same dtype and device out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Adapted", "adapt", "dtype_code", "dtype_from_code", "check_dtype", "bfloat16"]

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


def check_dtype(dt: np.dtype, op: str) -> None:
    """Raise TypeError unless `op` supports arrays of dtype `dt`."""
    if np.dtype(dt) not in _CODE_OF:
        supported = ", ".join(str(d) for d in _CODES)
        raise TypeError(f"{op}: unsupported dtype {np.dtype(dt)!s}; supported: {supported}")
    if op in ("all_max", "all_min") and np.dtype(dt).kind == "c":
        raise TypeError(f"{op}: complex numbers have no order; reduce .real and .imag separately")


@dataclass(frozen=True)
class Adapted:
    """A NumPy view of a caller's array and the way back to the caller's type."""

    array: np.ndarray
    wrap: Callable[[np.ndarray], Any]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _from_torch(x: Any) -> Adapted:
    import torch

    device, dtype = x.device, x.dtype
    t = x.detach()
    if device.type != "cpu":  # staged through host memory: one copy each way
        t = t.cpu()
    if dtype == torch.bfloat16:
        if bfloat16 is None:
            raise TypeError("bfloat16 tensors need ml_dtypes: pip install ml_dtypes")
        a = t.view(torch.int16).numpy().view(bfloat16)
    else:
        a = t.numpy()

    def wrap(r: np.ndarray) -> Any:
        if dtype == torch.bfloat16:
            out = torch.from_numpy(np.ascontiguousarray(r).view(np.int16)).view(torch.bfloat16)
        else:
            out = torch.from_numpy(np.ascontiguousarray(r))
        return out.to(device) if device.type != "cpu" else out

    return Adapted(a, wrap)


def _from_mlx(x: Any) -> Adapted:
    import mlx.core as mx

    dtype = x.dtype
    if dtype == mx.bfloat16:
        if bfloat16 is None:
            raise TypeError("bfloat16 arrays need ml_dtypes: pip install ml_dtypes")
        a = np.array(x.view(mx.uint16)).view(bfloat16)
    else:
        a = np.array(x)

    def wrap(r: np.ndarray) -> Any:
        if dtype == mx.bfloat16:
            return mx.array(np.ascontiguousarray(r).view(np.uint16)).view(mx.bfloat16)
        return mx.array(r)

    return Adapted(a, wrap)


def _from_jax(x: Any) -> Adapted:
    import jax.numpy as jnp

    return Adapted(np.asarray(x), jnp.asarray)


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
        import cupy

        return Adapted(cupy.asnumpy(x), cupy.asarray)
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
