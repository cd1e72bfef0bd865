"""Run in-rank scripts through the real launcher, and prove that none of their processes survive."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANKS = Path(__file__).resolve().parent / "ranks"


@dataclass
class Job:
    """A finished job: exit code, output, and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def lines(self, prefix: str) -> list[str]:
        """Return the stdout lines that start with `prefix`."""
        return [ln for ln in self.stdout.splitlines() if ln.startswith(prefix)]


def env(**extra: str) -> dict[str, str]:
    """Return this environment with the project importable and `extra` set."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for k in ("RINGCOMM_RANK", "RINGCOMM_HOSTFILE", "MLX_RANK", "MLX_HOSTFILE", "RINGCOMM_TIMEOUT"):
        e.pop(k, None)
    e.update(extra)
    return e


def available_gib() -> float:
    """Return the memory available for new processes, in GiB (infinite where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("inf")


def survivors(marker: str) -> list[int]:
    """Return the pids of live processes whose command line contains `marker`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            found.append(int(d.name))
    return found


def run(n: int, script: str, *args: str, timeout: float = 120, launcher: list[str] | None = None,
        **extra_env: str) -> Job:
    """Run tests/ranks/SCRIPT on `n` ranks through `ringcomm launch`; check nothing survives."""
    marker = f"--job-marker={uuid.uuid4().hex}"
    cmd = launcher or [sys.executable, "-m", "ringcomm", "launch", "-n", str(n)]
    argv = [*cmd, sys.executable, str(RANKS / script), *args, marker]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env(**extra_env), stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while survivors(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = survivors(marker)
    assert not left, f"processes outlived the job: {left}"
    return Job(proc.returncode, proc.stdout, proc.stderr, seconds)


def run_direct(n: int, script: str, *args: str, timeout: float = 60, **extra_env: str) -> list[Job]:
    """Start `n` ranks of tests/ranks/SCRIPT without the launcher; return each rank's result.

    For backend tests where the launcher's stopping of the other ranks would hide
    what they do on their own when a peer fails.
    """
    import json
    import secrets
    import socket
    import tempfile

    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[f"127.0.0.1:{p}"] for p in ports], f)
    marker = f"--job-marker={uuid.uuid4().hex}"
    base = env(RINGCOMM_HOSTFILE=f.name, RINGCOMM_TOKEN=secrets.token_hex(8), **extra_env)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(RANKS / script), *args, marker],
                              env=dict(base, RINGCOMM_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for r in range(n)]
    jobs = []
    try:
        for p in procs:
            left = max(0.1, timeout - (time.monotonic() - t0))
            out, err = p.communicate(timeout=left)
            jobs.append(Job(p.returncode, out, err, time.monotonic() - t0))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        os.unlink(f.name)
    assert not survivors(marker)
    return jobs
