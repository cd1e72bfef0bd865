"""Pure functions that build guard command lines and the frames sent to guards."""

from __future__ import annotations

import functools
import json
import shlex
import struct
from pathlib import Path

__all__ = [
    "MARK",
    "STDIN_DATA",
    "STDIN_EOF",
    "TERMINATE",
    "frame",
    "guard_argv",
    "guard_remote_command",
    "guard_source",
    "start_frame",
]

STDIN_DATA = b"D"
STDIN_EOF = b"E"
TERMINATE = b"T"
START = b"S"
# Must equal guard.MARK; guard.py is executed, not imported, so it is repeated.
MARK = b"\x00ringcomm-guard "


@functools.lru_cache(maxsize=1)
def guard_source() -> bytes:
    """Return the guard's source, sent on its stdin ahead of the first frame."""
    return (Path(__file__).with_name("guard.py")).read_bytes()


def _bootstrap(length: int) -> str:
    # No quotes inside, so the command reads plainly after shell quoting.
    return f"import sys;exec(sys.stdin.buffer.read({length}))"


def guard_argv(python: str, source_length: int | None = None) -> list[str]:
    """Return the argv that starts a guard, which reads its source from stdin."""
    n = len(guard_source()) if source_length is None else source_length
    return [python, "-c", _bootstrap(n)]


def guard_remote_command(python: str, source_length: int | None = None) -> str:
    """Return the guard command as one string quoted for a POSIX remote shell."""
    return "exec " + shlex.join(guard_argv(python, source_length))


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    """Return one frame: type byte, 4-byte big-endian length, payload."""
    if len(kind) != 1:
        raise ValueError(f"expected a one-byte frame type, got {kind!r}")
    return kind + struct.pack(">I", len(payload)) + payload


def start_frame(argv: list[str], env: dict[str, str], *, cwd: str | None,
                hostfile: str | None, hostfile_vars: tuple[str, ...],
                grace: float, cwd_fallback: str | None = None) -> bytes:
    """Return the ``S`` frame that tells a guard what to run and how."""
    spec = {
        "argv": list(argv),
        "env": dict(env),
        "cwd": cwd,
        "cwd_fallback": cwd_fallback,
        "hostfile": hostfile,
        "hostfile_vars": list(hostfile_vars),
        "grace": grace,
    }
    return frame(START, json.dumps(spec).encode())
