"""A timeline of a rank's calls, in the Chrome trace event format that Perfetto opens.

With RINGCOMM_TRACE=DIR, each rank writes ``DIR/rank<R>.json``: one complete
event ("ph": "X") per call, with the op, bytes, group, the path the call took,
and how long it waited for the other ranks (until the first peer's header
arrived) against how long it moved data afterwards. Events are written as
they come, in the trace format's array form, so a rank that dies still
leaves every call it finished; the closing bracket is written at exit and
is optional for readers. `merge` joins the ranks' files into one, one
process track per rank (``ringcomm launch --trace DIR`` does this).

Off (the default) costs one attribute test per call.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["Tracer", "merge", "open_tracer", "read_events"]

_FLUSH_EVERY = 64


class Tracer:
    """Writes one rank's events to its file."""

    def __init__(self, path: Path, rank: int) -> None:
        self.path = path
        self.rank = rank
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._file: IO[str] | None = path.open("w", encoding="utf-8")
        self._file.write("[\n")
        self._origin_us = time.time() * 1e6 - time.perf_counter() * 1e6
        self._write(json.dumps({"name": "process_name", "ph": "M", "pid": rank,
                                "args": {"name": f"rank {rank}"}}))
        atexit.register(self.close)

    def span(self, name: str, start: float, end: float, args: Mapping[str, Any]) -> None:
        """Record a call from `start` to `end` (time.perf_counter() seconds)."""
        event = {"name": name, "ph": "X", "pid": self.rank, "tid": 0, "cat": "ringcomm",
                 "ts": round(self._origin_us + start * 1e6, 3),
                 "dur": round((end - start) * 1e6, 3), "args": dict(args)}
        self._write(json.dumps(event))

    def _write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line + ",\n")
            if len(self._pending) >= _FLUSH_EVERY:
                self._flush()

    def _flush(self) -> None:
        if self._file is not None and self._pending:
            self._file.write("".join(self._pending))
            self._file.flush()
            self._pending.clear()

    def close(self) -> None:
        with self._lock:
            self._flush()
            if self._file is not None:
                self._file.write("{}]\n")  # an empty last event: the commas stay valid JSON
                self._file.close()
                self._file = None


def open_tracer(environ: Mapping[str, str], rank: int) -> Tracer | None:
    """Return this rank's tracer when RINGCOMM_TRACE names a directory, else None."""
    from . import environment

    where = environ.get(environment.TRACE)
    if not where:
        return None
    directory = Path(where)
    directory.mkdir(parents=True, exist_ok=True)
    return Tracer(directory / f"rank{rank}.json", rank)


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the events of one rank's file, whether or not the rank closed it."""
    text = Path(path).read_text(encoding="utf-8").rstrip()
    if not text.endswith("]"):
        text = text.rstrip(",") + "]"
    events = json.loads(text)
    return [e for e in events if e]


def merge(paths: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str]) -> int:
    """Write the events of every rank's file into one trace at `out`; return the event count."""
    events: list[dict[str, Any]] = []
    for p in sorted(paths, key=str):
        events += read_events(p)
    Path(out).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}),
                         encoding="utf-8")
    return len(events)
