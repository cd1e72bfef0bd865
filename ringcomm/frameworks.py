"""Where an array of a framework with autodiff or tracing goes before ringcomm's plain path.

A collective on a torch tensor that requires grad, on an MLX array inside `mx.grad`, or on a
JAX tracer inside `jax.jit` cannot take the plain path (NumPy in, NumPy out) without cutting
the framework's graph, and a cut graph gives zero or missing gradients without a word. So
every op of `ringcomm.ops`, given anything but a NumPy array, first asks `hook(x)` for the
framework's module (`ringcomm.torch.autograd`, `ringcomm.mlx.autodiff`,
`ringcomm.jax.collectives`) and calls its `dispatch(op, x, args, kwargs)`. The module either
handles the call (a differentiable or traceable collective), raises a clear error (a transform
it cannot honour), or returns NotImplemented: nothing to differentiate, take the plain path.

The framework's module calls back into ringcomm's plain ops through `plain(op)`, which skips
the hook for that call (on its thread), so a module never sees its own calls again.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["hook", "plain", "register"]

# The module of each framework, by the top-level package of its array types.
_MODULES = {
    "torch": "ringcomm.torch.autograd",
    "mlx": "ringcomm.mlx.autodiff",
    "jax": "ringcomm.jax.collectives",
    "jaxlib": "ringcomm.jax.collectives",
}
_loaded: dict[str, ModuleType | None] = {}
_off = threading.local()  # set while a framework's module makes a plain call
_ops: dict[str, Callable[..., Any]] = {}  # ringcomm's ops by name (`register`)


def hook(x: object) -> ModuleType | None:
    """Return the framework module that must see a call on `x` first, or None."""
    if getattr(_off, "on", False):
        return None
    top = type(x).__module__.partition(".")[0]
    try:
        return _loaded[top]
    except KeyError:
        pass
    name = _MODULES.get(top)
    module: ModuleType | None = None
    if name is not None:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only the framework itself may be missing (an array of it exists, so that is
            # unusual); a ringcomm module that fails to import is a bug, and raising beats a
            # silent plain path that cuts gradients.
            if e.name is None or not name.startswith(e.name) and e.name.split(".")[0] != top:
                raise
    _loaded[top] = module
    return module


def register(*fns: Callable[..., Any]) -> None:
    """Record ringcomm's ops by name for `plain` (ops.py and uneven.py register theirs)."""
    for fn in fns:
        _ops[fn.__name__] = fn


def plain(op: str) -> Callable[..., Any]:
    """Return ringcomm's op named `op` without the hook: a framework's module's own calls."""
    fn = _ops[op]

    def call(*args: Any, **kwargs: Any) -> Any:
        before = getattr(_off, "on", False)
        _off.on = True
        try:
            return fn(*args, **kwargs)
        finally:
            _off.on = before
    call.__name__ = op
    return call
