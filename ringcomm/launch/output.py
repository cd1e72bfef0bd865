"""Forward rank output line by line, optionally tagged and copied to files."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import IO

__all__ = ["Output"]


class Output:
    """Write whole lines from many ranks without interleaving them mid-line."""

    def __init__(self, *, tag: bool = False, output_dir: Path | None = None,
                 stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None) -> None:
        self.tag = tag
        self.lock = threading.Lock()
        self.streams = {
            "stdout": stdout if stdout is not None else sys.stdout.buffer,
            "stderr": stderr if stderr is not None else sys.stderr.buffer,
        }
        self.output_dir = output_dir
        self.files: dict[tuple[int, str], IO[bytes]] = {}
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)

    def _file(self, rank: int, name: str) -> IO[bytes] | None:
        if self.output_dir is None:
            return None
        key = (rank, name)
        f = self.files.get(key)
        if f is None:
            # Open for the whole job; close() closes it.
            f = open(self.output_dir / f"rank{rank}.{name}", "wb")
            self.files[key] = f
        return f

    def write(self, rank: int, name: str, line: bytes) -> None:
        """Write one line (or a final partial line) of ``rank``'s ``name`` stream."""
        data = line
        if self.tag:
            data = f"[{rank}] ".encode() + line
            if not data.endswith(b"\n"):
                data += b"\n"
        with self.lock:
            f = self._file(rank, name)
            if f is not None:
                f.write(line)
                f.flush()
            stream = self.streams[name]
            try:
                stream.write(data)
                stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # keep draining the rank so it never blocks on a full pipe

    def message(self, text: str) -> None:
        """Write a launcher message line to stderr."""
        with self.lock:
            try:
                self.streams["stderr"].write(text.encode() + b"\n")
                self.streams["stderr"].flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Close the per-rank files."""
        with self.lock:
            for f in self.files.values():
                f.close()
            self.files.clear()
