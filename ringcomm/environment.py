"""The environment contract between a launcher and the ranks: its one owner.

A launcher (``ringcomm launch``, ``mlx.launch``) tells each rank who it is
through environment variables and a *rank hostfile*; the backends read them.
The launcher and the backends import nothing from each other: they meet
here. This module writes what the launcher sets (`launcher_vars`,
`dump_rank_hostfile`) and reads what a rank finds (`ring_launch`,
`read_rank_hostfile`, `timeout`), and it owns the ``"ip:port"`` text of an
address (`format_address`, `parse_address`).

The rank hostfile is JSON: a list with one entry per rank, each a list of
``"ip:port"`` strings, one per connection (``[ipv6]:port`` for IPv6).
Standard library only: the launcher side imports it without NumPy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BACKEND",
    "DEBUG",
    "DEFAULT_TIMEOUT",
    "HOSTFILE",
    "HOSTFILE_VARS",
    "KEY_DIR",
    "MAX_OBJECT_BYTES",
    "LOG_LEVEL",
    "MLX_HOSTFILE",
    "MLX_RANK",
    "RANK",
    "RDZV_PORT",
    "RESTART",
    "STALL_SECONDS",
    "TIMEOUT",
    "TOKEN",
    "TRACE",
    "TRANSPORT",
    "ALGORITHMS",
    "TRANSPORTS",
    "UNAUTHENTICATED",
    "UNAUTHENTICATED_PICKLE",
    "RankHostfileError",
    "Rendezvous",
    "RingLaunch",
    "algorithm",
    "debug",
    "dump_rank_hostfile",
    "expand_nodelist",
    "format_address",
    "launcher_vars",
    "log_level",
    "max_object_bytes",
    "parse_address",
    "rank_addresses",
    "read_rank_hostfile",
    "rendezvous",
    "ring_launch",
    "stall_seconds",
    "timeout",
    "transport",
    "unauthenticated",
    "unauthenticated_pickle",
]

RANK = "RINGCOMM_RANK"
HOSTFILE = "RINGCOMM_HOSTFILE"
BACKEND = "RINGCOMM_BACKEND"
TOKEN = "RINGCOMM_TOKEN"
TIMEOUT = "RINGCOMM_TIMEOUT"
STALL_SECONDS = "RINGCOMM_STALL_SECONDS"
LOG_LEVEL = "RINGCOMM_LOG_LEVEL"
RDZV_PORT = "RINGCOMM_RDZV_PORT"
RESTART = "RINGCOMM_RESTART"
TRACE = "RINGCOMM_TRACE"
TRANSPORT = "RINGCOMM_TRANSPORT"
DEBUG = "RINGCOMM_DEBUG"
# Where rank 0 leaves the job's key for the other ranks when no token is set (0700, this user's).
KEY_DIR = "RINGCOMM_KEY_DIR"
# 1: run without a secret (a key derived from public facts: anyone reaching the ports can join).
UNAUTHENTICATED = "RINGCOMM_UNAUTHENTICATED"
# 1: object calls unpickle what peers of such a job sent (a stranger's pickle runs code).
UNAUTHENTICATED_PICKLE = "RINGCOMM_UNAUTHENTICATED_PICKLE"
# The largest pickled object an object call takes from a peer (bytes; default 1 GiB).
MAX_OBJECT_BYTES = "RINGCOMM_MAX_OBJECT_BYTES"
DEFAULT_MAX_OBJECT_BYTES = 1 << 30
# 0: run the pure-Python path even where the compiled core is built (ringcomm.native).
NATIVE = "RINGCOMM_NATIVE"
# The small all-reduce's algorithm across sockets: auto (by the model), ring, or doubling.
ALGORITHM = "RINGCOMM_ALGORITHM"
MLX_RANK = "MLX_RANK"
MLX_HOSTFILE = "MLX_HOSTFILE"
# Both launchers' variables are set, so a program written for either finds its rank.
HOSTFILE_VARS = (HOSTFILE, MLX_HOSTFILE)
# (rank variable, hostfile variable), in the order a rank looks for them.
_RING_PAIRS = ((RANK, HOSTFILE), (MLX_RANK, MLX_HOSTFILE))

# Seconds any single wait on a peer may last before it becomes an error.
DEFAULT_TIMEOUT = 300.0
# Seconds a call may wait before every waiting rank reports what it waits for.
DEFAULT_STALL_SECONDS = 60.0


class RankHostfileError(ValueError):
    """The rank hostfile cannot be read or is not a list of lists of ``"ip:port"``."""


# -- addresses ---------------------------------------------------------------------------------


def format_address(host: str, port: int) -> str:
    """Return ``"host:port"``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """Return (host, port) of ``"ip:port"`` or ``"[ipv6]:port"``; raise ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expecting 'ip:port' with a port in 1..65535, got {text!r}")
    return host.strip("[]"), int(port)


def rank_addresses(ips: Sequence[str], ports: Sequence[int]) -> list[str]:
    """Return one rank's ``"ip:port"`` list: ``len(ports)/len(ips)`` connections per ip."""
    if not ips:
        raise ValueError("expected at least one ip for the rank, got none")
    if len(ports) % len(ips):
        raise ValueError(f"expected a multiple of {len(ips)} ports, got {len(ports)}")
    per_ip = len(ports) // len(ips)
    return [format_address(ip, port)
            for i, ip in enumerate(ips) for port in ports[i * per_ip:(i + 1) * per_ip]]


# -- the rank hostfile -------------------------------------------------------------------------


def dump_rank_hostfile(ranks: Sequence[Sequence[str]]) -> str:
    """Return the JSON text of a rank hostfile."""
    return json.dumps([list(r) for r in ranks])


def read_rank_hostfile(path: str | os.PathLike[str]) -> list[list[str]]:
    """Read and check a rank hostfile; a bare ``"ip:port"`` entry counts as a list of one."""
    where = repr(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise RankHostfileError(f"cannot read rank hostfile {where}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise RankHostfileError(f"rank hostfile {where} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not data:
        raise RankHostfileError(
            f"rank hostfile {where}: expected a non-empty list of lists of 'ip:port', got {data!r}")
    ranks = []
    for i, entry in enumerate(data):
        if isinstance(entry, str):
            entry = [entry]
        if not isinstance(entry, list) or not entry or not all(isinstance(a, str) for a in entry):
            raise RankHostfileError(
                f"rank hostfile {where}: entry {i} must be a list of 'ip:port' strings, "
                f"got {entry!r}")
        for text in entry:
            try:
                parse_address(text)
            except ValueError as e:
                raise RankHostfileError(f"rank hostfile {where}: entry {i}: {e}") from None
        ranks.append(entry)
    return ranks


# -- what the launcher sets --------------------------------------------------------------------


def launcher_vars(backend: str, token: str, rank: int | None = None,
                  environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the variables a ringcomm launcher sets for a rank (the hostfile ones aside).

    ``rank`` is None where another launcher (mpirun) numbers the ranks. The
    rank-side settings (RINGCOMM_TIMEOUT, RINGCOMM_STALL_SECONDS,
    RINGCOMM_LOG_LEVEL, RINGCOMM_TRACE, RINGCOMM_TRANSPORT) pass through from
    the launcher's own environment.
    """
    env: dict[str, str] = {BACKEND: backend, TOKEN: token}
    if rank is not None:
        env[RANK] = env[MLX_RANK] = str(rank)
    source = os.environ if environ is None else environ
    for name in (TIMEOUT, STALL_SECONDS, LOG_LEVEL, TRACE, TRANSPORT, DEBUG):
        value = source.get(name)
        if value is not None:
            env[name] = value
    return env


# -- what a rank reads -------------------------------------------------------------------------


@dataclass(frozen=True)
class RingLaunch:
    """What a ring launcher told this rank; ``missing`` names the variables it left out."""

    rank: str | None
    hostfile: str | None
    missing: tuple[str, ...]

    @property
    def launched(self) -> bool:
        """Return whether a launcher set any variable of the ring contract."""
        return self.rank is not None or self.hostfile is not None


def ring_launch(environ: Mapping[str, str]) -> RingLaunch:
    """Return the ring launcher's variables, preferring RINGCOMM_* over MLX_*.

    When no variable of either pair is set, every name of the RINGCOMM_* pair is missing.
    """
    for rank_var, file_var in _RING_PAIRS:
        rank, path = environ.get(rank_var), environ.get(file_var)
        if rank is not None or path is not None:
            missing = tuple(v for v, val in ((rank_var, rank), (file_var, path)) if val is None)
            return RingLaunch(rank, path, missing)
    return RingLaunch(None, None, (RANK, HOSTFILE))


@dataclass(frozen=True)
class Rendezvous:
    """A job started by an engine that gives each rank only its number, the size and a meeting place.

    The ranks meet at rank 0 (`host`:`port`), which hands out the rank hostfile.
    """

    source: str  # "torch" (torchrun, Kubernetes operators) or "slurm"
    rank: int
    size: int
    host: str
    port: int
    local_rank: int | None
    job: str  # the engine's id of this job, from which the key is derived without a token
    port_origin: str  # how the port was chosen, for error messages

    def describe(self) -> str:
        return f"{self.source} rendezvous at {format_address(self.host, self.port)}"


def _int(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name, "")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _rdzv_port(environ: Mapping[str, str], derived: int, how: str) -> tuple[int, str]:
    raw = environ.get(RDZV_PORT)
    if raw:
        port = _int(environ, RDZV_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"{RDZV_PORT} must be a port in 1..65535, got {raw!r}")
        return port, RDZV_PORT
    return derived, how


# torchrun's agent (and torch.distributed's store) listens on MASTER_PORT itself, so the ring
# meets one port above it unless told otherwise.
TORCH_PORT_OFFSET = 1
# A Slurm step's rendezvous port is derived from the job and step ids into this range.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 29600, 20000


def rendezvous(environ: Mapping[str, str]) -> Rendezvous | None:
    """Return the rendezvous an engine's variables describe (torch's, else a Slurm step's), or None.

    Raises ValueError when the variables are there but malformed.
    """
    if all(k in environ for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")):
        rank, size, port = (_int(environ, k) for k in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
        if not 0 < port < 65536 - TORCH_PORT_OFFSET:
            raise ValueError(f"MASTER_PORT must be a port in 1..{65535 - TORCH_PORT_OFFSET}, "
                             f"got {environ['MASTER_PORT']!r}")
        rdzv, how = _rdzv_port(environ, port + TORCH_PORT_OFFSET,
                               f"MASTER_PORT+{TORCH_PORT_OFFSET}")
        local = environ.get("LOCAL_RANK")
        job = environ.get("TORCHELASTIC_RUN_ID") or (
            f"{environ['MASTER_ADDR']}:{port}:{size}")
        info = Rendezvous("torch", rank, size, environ["MASTER_ADDR"], rdzv,
                          int(local) if local and local.isdigit() else None, job, how)
    elif "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ \
            and ("SLURM_STEP_NODELIST" in environ or "SLURM_JOB_NODELIST" in environ):
        # SLURM_STEP_NUM_TASKS is set only inside a job step (srun), not for a batch script.
        rank, size = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_STEP_NUM_TASKS")
        nodes = expand_nodelist(environ.get("SLURM_STEP_NODELIST")
                                or environ["SLURM_JOB_NODELIST"])
        job_id, step = environ.get("SLURM_JOB_ID", "0"), environ.get("SLURM_STEP_ID", "0")
        mix = (int(job_id) if job_id.isdigit() else 0) * 31 + (int(step) if step.isdigit() else 0)
        rdzv, how = _rdzv_port(environ, SLURM_PORT_BASE + mix % SLURM_PORT_SPAN,
                               "derived from SLURM_JOB_ID and SLURM_STEP_ID")
        local = environ.get("SLURM_LOCALID")
        info = Rendezvous("slurm", rank, size, nodes[0], rdzv,
                          int(local) if local and local.isdigit() else None,
                          f"slurm:{job_id}.{step}", how)
    else:
        return None
    if info.size < 1 or not 0 <= info.rank < info.size:
        raise ValueError(f"{info.source} rendezvous: rank {info.rank} is out of range for a job "
                         f"of {info.size} ranks")
    return info


def expand_nodelist(text: str) -> list[str]:
    """Return the host names of a Slurm node list, e.g. ``node[01-03,07],gpu-a[1-2]``.

    Ranges keep their zero padding; a name may hold several bracket groups
    (``rack[1-2]-node[1-2]``). Raises ValueError on a malformed list.
    """
    names: list[str] = []
    for item in _split_top(text.strip(), text):
        names += _expand_item(item, text)
    if not names:
        raise ValueError(f"empty Slurm node list {text!r}")
    return names


def _split_top(text: str, whole: str) -> list[str]:
    """Split at commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm node list {whole!r}")
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in Slurm node list {whole!r}")
    items.append(text[start:])
    return [i for i in (x.strip() for x in items) if i]


def _expand_item(item: str, whole: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    head, body, tail = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    values: list[str] = []
    for part in body.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {part!r} in Slurm node list {whole!r}")
        if not sep:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"range {part!r} runs backwards in Slurm node list {whole!r}")
        width = len(lo)
        values += [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
    return [head + v + rest for v in values for rest in _expand_item(tail, whole)]


def ring_launched_size(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """Return (hostfile variable, ranks) when a ring launcher started this process, else None.

    A hostfile that cannot be read proves nothing here (None): the ring backend reports it.
    """
    for var in HOSTFILE_VARS:
        path = environ.get(var)
        if path:
            try:
                return var, len(read_rank_hostfile(path))
            except RankHostfileError:
                return None
    return None


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def log_level(environ: Mapping[str, str]) -> int | None:
    """Return the logging level RINGCOMM_LOG_LEVEL names (DEBUG, INFO, ... or a number), or None."""
    raw = environ.get(LOG_LEVEL, "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    if not isinstance(level, int):
        raise ValueError(f"{LOG_LEVEL} must be DEBUG, INFO, WARNING, ERROR or a number, got {raw!r}")
    return level


def timeout(environ: Mapping[str, str]) -> float:
    """Return RINGCOMM_TIMEOUT in seconds (default 300); raise ValueError when it is not > 0."""
    return _seconds(environ, TIMEOUT, DEFAULT_TIMEOUT)


def stall_seconds(environ: Mapping[str, str]) -> float:
    """Return RINGCOMM_STALL_SECONDS (default 60); raise ValueError when it is not > 0."""
    return _seconds(environ, STALL_SECONDS, DEFAULT_STALL_SECONDS)


TRANSPORTS = ("auto", "tcp")


def transport(environ: Mapping[str, str]) -> str:
    """Return RINGCOMM_TRANSPORT: "auto" (default: shared memory between ranks of a host) or "tcp".

    Raise ValueError for any other value.
    """
    value = environ.get(TRANSPORT, "auto").strip().lower() or "auto"
    if value not in TRANSPORTS:
        raise ValueError(f"{TRANSPORT}={environ.get(TRANSPORT)!r} is not one of "
                         f"{', '.join(TRANSPORTS)}: auto uses shared memory between the ranks of "
                         "a host, tcp forces sockets everywhere")
    return value


ALGORITHMS = ("auto", "ring", "doubling")


def algorithm(environ: Mapping[str, str]) -> str:
    """Return RINGCOMM_ALGORITHM: how small all-reduces cross sockets.

    "auto" (default) lets the backend choose by ranks and hosts; "ring" forces the ring
    (p - 1 exchanges; hierarchical groups then reduce slices on every local rank's ring);
    "doubling" forces recursive doubling where the group has a power of two ranks. For
    measuring the model (benchmarks/model.py), not for tuning: auto is never slower there.
    Raise ValueError for any other value.
    """
    value = environ.get(ALGORITHM, "auto").strip().lower() or "auto"
    if value not in ALGORITHMS:
        raise ValueError(f"{ALGORITHM}={environ.get(ALGORITHM)!r} is not one of "
                         f"{', '.join(ALGORITHMS)}")
    return value


def debug(environ: Mapping[str, str]) -> bool:
    """Return whether RINGCOMM_DEBUG asks for the costly checks (1, true, yes, on)."""
    return _yes(environ, DEBUG)


def _yes(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def unauthenticated(environ: Mapping[str, str]) -> bool:
    """Return whether RINGCOMM_UNAUTHENTICATED chooses to run the job without a secret."""
    return _yes(environ, UNAUTHENTICATED)


def unauthenticated_pickle(environ: Mapping[str, str]) -> bool:
    """Return whether RINGCOMM_UNAUTHENTICATED_PICKLE lets object calls of such a job unpickle."""
    return _yes(environ, UNAUTHENTICATED_PICKLE)


def max_object_bytes(environ: Mapping[str, str]) -> int:
    """Return RINGCOMM_MAX_OBJECT_BYTES (default 1 GiB); raise ValueError when malformed."""
    raw = environ.get(MAX_OBJECT_BYTES, "").strip()
    if not raw:
        return DEFAULT_MAX_OBJECT_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_OBJECT_BYTES} must be a number of bytes, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{MAX_OBJECT_BYTES} must be at least 1, got {raw!r}")
    return value
