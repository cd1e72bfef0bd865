"""The backend registry: a name, a lazy factory and an availability check per backend.

A new backend is one `register` call. Nothing heavy is imported until a
backend is created or asked whether it is available, so the launcher can
read the names (for ``--backend`` and the hostfile's ``"backend"``) without
loading NumPy, sockets or MPI. The interface every backend implements is in
`base.py`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .base import Backend

__all__ = [
    "BackendName",
    "Registration",
    "available",
    "create",
    "names",
    "register",
]

Factory = Callable[[Mapping[str, str], float], "Backend"]

# The names a program may pass to init(backend=...): "any" and every registered
# backend a launcher starts. A Literal for type checkers; a test checks that it
# matches the registry.
BackendName = Literal["any", "ring", "mpi"]


@dataclass(frozen=True)
class Registration:
    """One backend: where its factory and availability check live, and who starts it."""

    name: str
    module: str
    """The module with ``create(environ, timeout) -> Backend`` and ``is_available() -> bool``."""
    launchable: bool = True
    """Whether ``ringcomm launch --backend NAME`` can start ranks for it."""

    def factory(self) -> Factory:
        """Import the backend's module and return its factory."""
        factory: Factory = importlib.import_module(self.module).create
        return factory

    def is_available(self) -> bool:
        """Import the backend's module and ask whether it can be used here."""
        return bool(importlib.import_module(self.module).is_available())


_registry: dict[str, Registration] = {}


def register(name: str, module: str, *, launchable: bool = True) -> None:
    """Register backend `name`, implemented in `module` (imported only when used)."""
    if name in _registry or name == "any":
        raise ValueError(f"backend {name!r} is already registered")
    _registry[name] = Registration(name, module, launchable)


def names() -> tuple[str, ...]:
    """Return the names of the backends a launcher can start, in registration order."""
    return tuple(n for n, r in _registry.items() if r.launchable)


def _get(name: str) -> Registration:
    try:
        return _registry[name]
    except KeyError:
        known = ", ".join(["any", *names()])
        raise ValueError(f"unknown backend {name!r}; expected one of {known}") from None


def available(name: str) -> bool:
    """Return whether backend `name` can be used here; False for a name not registered."""
    reg = _registry.get(name)
    if reg is None:
        return False
    try:
        return reg.is_available()
    except ImportError:
        return False


def create(name: str, environ: Mapping[str, str], timeout: float) -> Backend:
    """Create this process's world backend `name` from the launcher's environment."""
    return _get(name).factory()(environ, timeout)


register("ring", "ringcomm.backends.ring")
register("mpi", "ringcomm.backends.mpi")
register("single", "ringcomm.backends.single", launchable=False)
