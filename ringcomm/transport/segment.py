"""A host's shared-memory segment: its name, creation and mapping, layout, fences, liveness,
and the private wake-up sockets of its ranks. `shm` gives the overview.
"""


from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import mmap
import os
import platform
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from . import header
from .link import RECHECK_SECONDS

try:
    import _posixshmem  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None


__all__ = [
    "CHUNK_BYTES", "HEADER", "LINE", "LINK_BUDGET", "MAX_LOCAL_RANKS", "MIN_LINK_BYTES", "PREFIX",
    "SLOT_BYTES", "WAKE_PREFIX", "acquire", "alive", "attach", "available", "await_reason", "bound",
    "check_wake_directory", "chunk_bytes", "connected", "create", "full_fence", "leftovers",
    "link_bytes", "region_bytes", "release", "remove_wake_directory", "segment_name", "sweep",
    "unlink", "wake", "wake_address", "wake_directory", "wake_leftovers",
]

PREFIX = "ringcomm-"
LINE = 64
HEADER = header.SIZE  # a call's header at the start of each slot
SLOT_BYTES = (64 << 10) + 128  # header + small message (64 KiB)
CHUNK_BYTES = 4 << 20  # one half of a rank's staging memory
MIN_CHUNK_BYTES = 256 << 10
# All local ranks' staging memory together stays under this, so a container's small /dev/shm
# (64 MiB under Docker) holds a job of several ranks.
STAGING_BUDGET = 32 << 20
# Every local pair's two link channels together stay under this; a channel holds at most
# LINK_BYTES, at least MIN_LINK_BYTES (powers of two).
LINK_BUDGET = 16 << 20
LINK_BYTES = 1 << 20
MIN_LINK_BYTES = 4 << 10
# The compiled core takes at most this many ranks on one host (its MAX_RANKS); more keep TCP.
MAX_LOCAL_RANKS = 256

# Waiting: spin this long (when every local rank has a core), then yield the core until
# YIELD_SECONDS have passed, then block, waking at least every SLEEP_SECONDS.
SPIN_SECONDS = 50e-6
SLEEP_SECONDS = RECHECK_SECONDS  # (YIELD_SECONDS too: the same as a link's wait)
LIVENESS_SECONDS = 0.1

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _c_fence() -> Callable[[], None] | None:
    """Return a C11 sequentially consistent fence callable, or None when none is found."""
    for lib, name in (("atomic", "atomic_thread_fence"), ("System", "OSMemoryBarrier")):
        path = ctypes.util.find_library(lib)
        if path is None:
            continue
        try:
            fn = getattr(ctypes.CDLL(path), name)
        except (OSError, AttributeError):
            continue
        if name == "atomic_thread_fence":
            fn.argtypes, fn.restype = [ctypes.c_int], None
            return lambda: fn(5)  # memory_order_seq_cst
        fn.argtypes, fn.restype = [], None
        return fn
    return None


def _locked_fence() -> Callable[[], None]:
    lock = threading.Lock()

    def fence() -> None:
        lock.acquire()  # a locked compare-and-swap: a full barrier on x86
        lock.release()
    return fence


def _nothing() -> None:
    return None


if _X86:
    release = acquire = _nothing
    full_fence = _locked_fence()
    _FENCED = True
else:  # pragma: no cover - exercised on arm64 hosts
    _fence = _c_fence()
    _FENCED = _fence is not None
    release = acquire = full_fence = _fence if _fence is not None else _nothing


def available() -> bool:
    """Return whether this platform gives shared memory with ordered flags."""
    return _posixshmem is not None and _FENCED and hasattr(socket, "AF_UNIX")


def alive(pid: int) -> bool:
    """Return whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in (b"Z", b"X")
    return True


def leftovers() -> list[str]:
    """Return the names of ringcomm segments in /dev/shm (Linux; elsewhere an empty list)."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(PREFIX))
    except OSError:
        return []


def sweep() -> None:
    """Unlink this user's segments whose creator has died before it could unlink them."""
    for name in leftovers():
        try:
            pid = int(name[len(PREFIX):].split("-", 1)[0])
            st = os.stat(f"/dev/shm/{name}")
        except (ValueError, OSError):
            continue
        if st.st_uid == os.getuid() and stat.S_ISREG(st.st_mode) and not alive(pid):
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass
    for path in wake_leftovers():
        remove_wake_directory(path)


def segment_name(pid: int, *parts: object) -> str:
    """Return the segment name for a group's ranks on one host (at most 31 characters: macOS)."""
    tag = hashlib.blake2b(repr(parts).encode(), digest_size=5).hexdigest()
    return f"{PREFIX}{pid}-{tag}"


def chunk_bytes(count: int) -> int:
    """Return the size of a staging half for `count` local ranks."""
    per_rank = STAGING_BUDGET // (2 * max(1, count))
    return max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, per_rank & ~(LINE - 1)))


def link_bytes(count: int, sets: int = 1) -> int:
    """Return the ring buffer size of a link channel among `count` local ranks, `sets` per pair
    (a power of two within LINK_BUDGET), or 0 where no channel size keeps the budget."""
    per = LINK_BUDGET // max(1, sets * count * (count - 1))
    if per < MIN_LINK_BYTES:
        return 0  # even the smallest channels would not keep the budget: no links
    size = MIN_LINK_BYTES
    while size * 2 <= min(per, LINK_BYTES):
        size *= 2
    return size


def region_bytes(chunk: int, channels: int = 0, cap: int = 0) -> int:
    size = LINE + 2 * SLOT_BYTES + 2 * chunk + channels * (2 * LINE + cap)
    return (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE


def create(name: str, size: int) -> mmap.mmap:
    """Create and map segment `name` of `size` bytes; raise OSError when the host has no room."""
    assert _posixshmem is not None
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, size)
        if hasattr(os, "posix_fallocate"):
            # Reserve the pages now: a full /dev/shm would otherwise kill the rank with SIGBUS
            # at first touch, mid-collective.
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        return mmap.mmap(fd, size)
    except BaseException:
        unlink(name)
        raise
    finally:
        os.close(fd)


def attach(name: str, size: int) -> mmap.mmap:
    """Map the existing segment `name`."""
    assert _posixshmem is not None
    fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    try:
        have = os.fstat(fd).st_size
        if have < size:
            raise OSError(errno.EINVAL, f"segment {name} has {have} bytes, expected {size}")
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def unlink(name: str) -> None:
    """Remove segment `name`'s name (mappings stay valid); ignore a name already gone."""
    if _posixshmem is None:
        return
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass


# Wake-up sockets are bound in a directory that only this user can enter (mkdtemp: 0700), so
# no other user can bind their names first or send to them; Linux's abstract namespace, which
# has no permissions, is not used. The directory's name holds its creator's pid, for `sweep`.
WAKE_PREFIX = "ringcomm-"


def wake_directory() -> str:
    """Create the private directory of a group's wake-up sockets on this host (its first rank)."""
    return tempfile.mkdtemp(prefix=f"{WAKE_PREFIX}{os.getpid()}-")


def check_wake_directory(path: str) -> None:
    """Raise OSError unless `path` is a directory of this user's that no one else can enter."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, f"{path} is not a private directory of this user "
                      f"(mode {st.st_mode & 0o777:o}, owner {st.st_uid})")


def wake_leftovers() -> list[str]:
    """Return the wake-up directories in the temporary directory whose creator has exited."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    left = []
    for name in names:
        if not name.startswith(WAKE_PREFIX):
            continue
        try:
            pid = int(name[len(WAKE_PREFIX):].split("-", 1)[0])
            st = os.lstat(os.path.join(base, name))
        except (ValueError, OSError):
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not alive(pid):
            left.append(os.path.join(base, name))
    return sorted(left)


def remove_wake_directory(path: str) -> None:
    """Remove a wake-up directory and the sockets in it, where they still are."""
    try:
        for name in os.listdir(path):
            try:
                os.unlink(os.path.join(path, name))
            except OSError:
                pass
        os.rmdir(path)
    except OSError:
        pass


def wake_address(directory: str, index: int | str) -> str:
    return os.path.join(directory, str(index))


def bound(path: str) -> socket.socket:
    """Return a non-blocking datagram socket bound to `path` (a waiter's wake-up)."""
    return _datagram(path, bind=True)


def connected(path: str) -> socket.socket:
    """Return a non-blocking datagram socket connected to the wake-up bound at `path`.

    Once connected it reaches that socket without its name, so the name can be removed.
    """
    return _datagram(path, bind=False)


def _datagram(path: str, *, bind: bool) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        (s.bind if bind else s.connect)(path)
    except BaseException:
        s.close()
        raise
    return s


# A rank that leaves the job starts its notices to every rank before it raises its gone flag;
# a peer that sees the flag waits this long for the notice, whose reason names the cause.
NOTICE_GRACE = 0.5


def await_reason(check: Callable[[], None]) -> None:
    """Wait up to NOTICE_GRACE for the job's reason to arrive (`check` raises it then)."""
    deadline = time.monotonic() + NOTICE_GRACE
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def wake(s: socket.socket | None) -> None:
    """Wake the waiter `s` is connected to."""
    if s is None:
        return
    try:
        s.send(b"\1")
    except OSError:
        pass  # its queue is full (it wakes anyway) or it is gone


