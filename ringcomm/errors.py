"""The exceptions ringcomm raises: one family under :class:`RingcommError`."""

from __future__ import annotations

__all__ = [
    "CommTimeoutError",
    "ConnectError",
    "InitError",
    "MismatchError",
    "PeerAbortedError",
    "PeerError",
    "RingcommError",
]


class RingcommError(RuntimeError):
    """Base of every error raised by ringcomm."""


class InitError(RingcommError):
    """The process group could not be created (environment, hostfile, backend)."""


class ConnectError(RingcommError):
    """A connection to a peer could not be made or was refused."""


class PeerError(RingcommError):
    """A peer died, closed its connection, or sent something unexpected."""


class PeerAbortedError(PeerError):
    """Another rank failed and told this one to stop."""


class CommTimeoutError(PeerError, TimeoutError):
    """A peer stayed silent past the deadline (RINGCOMM_TIMEOUT)."""


class MismatchError(RingcommError, ValueError):
    """Ranks called different collectives, or the same one with different dtype or shape."""
