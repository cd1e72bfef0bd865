"""Shared memory between the ranks of one host: a segment, sequence flags, and waiting.

A group's ranks on one host share one segment, POSIX shared memory named
``ringcomm-<leader pid>-<tag>`` (under /dev/shm on Linux). The host's first
rank of the group creates it, the others attach, and once every one of them
has attached the creator unlinks the name: the memory lives on while it is
mapped and goes with the last process, however that process ends.

Each local rank owns one region of the segment and writes only there:

    control line (64 B): posted count, sleeping flag, abandoned flag
    two slots: a 128-byte call header, then a small message (alternating by post)
    two halves of staging memory for large messages (alternating by chunk)
    with links: one channel to each other local rank per set of links (a line
      the sender writes, a line the receiver writes, a ring buffer)

A rank *posts* when its region holds what the others need: it bumps its
posted count. The others *wait* until every peer's count reaches the same
number. Ranks make the same posts in the same order, so counts match.

Memory ordering. The data a rank writes must be visible before its count is:
- x86-64 keeps stores in order and loads in order (TSO), so writing the data,
  then the count (one aligned 8-byte store, so never torn) is a release, and
  reading the count, then the data is an acquire. Each is a separate C call of
  the interpreter, which the compiler cannot reorder.
- Elsewhere (arm64, Apple silicon) `release()` before the count's store and
  `acquire()` after the count's load are real fences (C11
  ``atomic_thread_fence``, through libatomic or libSystem).
Sleeping needs more: a waiter sets its sleeping flag and then reads the count,
a poster sets its count and then reads the flags. A store followed by a load
of another address can pass each other even on x86, so both sides put a full
fence (`full_fence()`) between the two; x86 gets it from a locked instruction
(taking an uncontended lock), elsewhere from the C11 fence.

Waiting spins for a short while (only when the host has a core for every
local rank), then yields the core (`os.sched_yield`), then blocks on a
datagram socket that posters write to when a waiter's sleeping flag is set.
A blocked waiter also wakes every SLEEP_SECONDS to check the job's abort
state, its deadline, and whether the peers it waits for are alive.

Links (`ShmLink`, the shared-memory kind of `transport.link.Link`) carry a
byte stream each way between two local ranks, for send/recv and for rings
whose neighbours share a host. A channel is a single-producer,
single-consumer ring buffer: the sender writes bytes at `head`, then
publishes `head` (a release, as above); the receiver reads up to `head`,
then publishes `tail` (a release too: its reads are done before the sender
may overwrite them). Each end waits the same way as a post does, on wake-up
sockets of its own per channel and direction, so several threads of one
rank (the pipelined ring's senders and receivers) never take each other's
wake-ups. Where the compiled core is built, each link also holds its
`Channel` (`ShmLink.core`): the same two rings, for small send/recv that
move whole in one call; the counters live in the shared words, so both
ends' Python and C code may take turns on one channel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import mmap
import os
import platform
import select
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .. import native
from ..errors import CommTimeoutError, PeerAbortedError, PeerError
from .link import RECHECK_SECONDS, YIELD_SECONDS, Link, wait

try:
    import _posixshmem  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

__all__ = ["PREFIX", "Shared", "ShmLink", "alive", "available", "leftovers", "sweep"]

PREFIX = "ringcomm-"
LINE = 64
HEADER = 128  # a call's header at the start of each slot (transport.header.SIZE)
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
MIN_LINK_BYTES = 64 << 10

# Waiting: spin this long (when every local rank has a core), then yield the core until
# YIELD_SECONDS have passed, then block, waking at least every SLEEP_SECONDS.
SPIN_SECONDS = 50e-6
SLEEP_SECONDS = RECHECK_SECONDS  # (YIELD_SECONDS too: the same as a link's wait)
LIVENESS_SECONDS = 0.1

_MAIN = threading.main_thread()
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
    """Return the ring buffer size of a link channel among `count` local ranks, `sets` per pair."""
    per = LINK_BUDGET // max(1, sets * count * (count - 1))
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


def _wake_address(directory: str, index: int | str) -> str:
    return os.path.join(directory, str(index))


def _bound(path: str) -> socket.socket:
    """Return a non-blocking datagram socket bound to `path` (a waiter's wake-up)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.bind(path)
    except BaseException:
        s.close()
        raise
    return s


def _connected(path: str) -> socket.socket:
    """Return a non-blocking datagram socket connected to the wake-up bound at `path`.

    Once connected it reaches that socket without its name, so the name can be removed.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return s


# A rank that leaves the job starts its notices to every rank before it raises its gone flag;
# a peer that sees the flag waits this long for the notice, whose reason names the cause.
NOTICE_GRACE = 0.5


def _await_reason(check: Callable[[], None]) -> None:
    """Wait up to NOTICE_GRACE for the job's reason to arrive (`check` raises it then)."""
    deadline = time.monotonic() + NOTICE_GRACE
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def _wake(s: socket.socket | None) -> None:
    """Wake the waiter `s` is connected to."""
    if s is None:
        return
    try:
        s.send(b"\1")
    except OSError:
        pass  # its queue is full (it wakes anyway) or it is gone


class Shared:
    """This rank's view of its host's segment: regions, posting and waiting.

    `index` is this rank's place among the `count` local ranks; `pids` their
    process ids (for the liveness check); `names(j)` says who local rank j is
    in error messages; `check()` raises when the job was aborted.
    """

    def __init__(self, mem: mmap.mmap, wakes: str, index: int, count: int, chunk: int,
                 pids: list[int], timeout: float, spin: bool,
                 names: Callable[[int], str], check: Callable[[], None], cap: int = 0,
                 sets: int = 0) -> None:
        self.mem = mem
        self.wakes = wakes  # the private directory of the wake-up sockets
        self.index = index
        self.count = count
        self.chunk = chunk
        self.cap = cap
        self.sets = sets if cap else 0
        self.pids = pids
        self.timeout = timeout
        self._spin = SPIN_SECONDS if spin else 0.0
        self.names = names
        self._check = check
        self.region = region_bytes(chunk, self.sets * (count - 1), cap)
        self._links: dict[tuple[int, int], ShmLink] = {}
        self._q = memoryview(mem).cast("Q")
        words = self.region // 8
        self._posted_at = [j * words for j in range(count)]
        self._sleep_at = [j * words + 1 for j in range(count)]
        self._gone_at = [j * words + 2 for j in range(count)]
        self._others = [j for j in range(count) if j != index]
        self.posts = int(self._q[self._posted_at[index]])
        raw = np.frombuffer(mem, dtype=np.uint8)
        self._raw = raw
        self.slots = [[raw[j * self.region + LINE + s * SLOT_BYTES:][:SLOT_BYTES]
                       for s in range(2)] for j in range(count)]
        base = LINE + 2 * SLOT_BYTES
        self.halves = [[raw[j * self.region + base + h * chunk:][:chunk] for h in range(2)]
                       for j in range(count)]
        self._wake_to = [_wake_address(wakes, j) for j in range(count)]
        self._wake = _bound(self._wake_to[index])
        self._wake_out: list[socket.socket | None] = [None] * count  # connected in `join`
        self._joined = False
        # The compiled core's view of the same memory (small calls), where it is built: made
        # in `join`, once it can reach the other ranks' wake-ups.
        self.core: Any = None
        # The core's short wait: the spin (when it is on), then yielding until YIELD_SECONDS.
        self.short_wait = (self._spin, YIELD_SECONDS)

    def join(self) -> None:
        """Connect to the other local ranks' wake-up sockets, and the links' to theirs.

        Call once every local rank has made its Shared and links (a round of the set-up):
        from then on nothing here needs a name, and the directory can go.
        """
        self._joined = True
        for j in self._others:
            self._wake_out[j] = _connected(self._wake_to[j])
        for link in self._links.values():
            link.join()
        if native.CORE is not None:
            self.core = native.CORE.Segment(
                self.mem, self.index, self.count, self.region, LINE, SLOT_BYTES,
                [-1 if s is None else s.fileno() for s in self._wake_out])

    @classmethod
    def size_for(cls, count: int, staging: bool = True, links: int = 0
                 ) -> tuple[int, int, int]:
        """Return (segment bytes, chunk bytes, link channel bytes) for `count` local ranks.

        Without `staging` the segment has no staging halves (a group whose collectives
        take the ring, over links); `links` is the number of links between every two
        local ranks (one set for send/recv, one for a ring).
        """
        chunk = chunk_bytes(count) if staging else 0
        cap = link_bytes(count, links) if links else 0
        return region_bytes(chunk, links * (count - 1), cap) * count, chunk, cap

    def channel_at(self, src: int, dst: int, k: int = 0) -> int:
        """Return the offset of set `k`'s channel from local rank `src` to local rank `dst`."""
        c = k * (self.count - 1) + (dst if dst < src else dst - 1)
        return src * self.region + LINE + 2 * SLOT_BYTES + 2 * self.chunk + c * (2 * LINE + self.cap)

    def link(self, j: int, k: int = 0) -> ShmLink:
        """Return this rank's link of set `k` to local rank `j` (made on first use)."""
        link = self._links.get((j, k))
        if link is None:
            assert k < self.sets and j != self.index, "this segment has no such link"
            assert not self._joined, "every link is made before `join`: its wake-ups need the " \
                "directory, which is gone after it"
            link = self._links[j, k] = ShmLink(self, j, k)
        return link

    # -- posting and waiting ---------------------------------------------------------------

    def post(self) -> int:
        """Publish this rank's region (everything written before); return the post number."""
        q = self._q
        release()
        self.posts += 1
        q[self._posted_at[self.index]] = self.posts
        full_fence()
        for j in self._others:
            if q[self._sleep_at[j]]:
                _wake(self._wake_out[j])
        return self.posts

    def wait(self, what: str, target: int | None = None, only: int | None = None) -> None:
        """Wait until every other local rank (or just `only`) posted `target` (default: ours).

        Raise CommTimeoutError after `timeout` seconds from the start, PeerError when a
        waited-for rank's process is gone, and whatever `check` raises on an abort.
        """
        q = self._q
        at = self._posted_at
        goal = self.posts if target is None else target
        pending = [j for j in (self._others if only is None else [only]) if q[at[j]] < goal]
        if not pending:
            acquire()
            return self.abandoned(what)
        start = time.perf_counter()
        # No polling for a call run in the background (async_op): the caller computes meanwhile.
        spin_until = start + (self._spin if threading.current_thread() is _MAIN else 0.0)
        while pending and time.perf_counter() < spin_until:
            pending = [j for j in pending if q[at[j]] < goal]
        yield_until = start + YIELD_SECONDS
        while pending and time.perf_counter() < yield_until:
            os.sched_yield()
            pending = [j for j in pending if q[at[j]] < goal]
        if pending:
            self._sleep(pending, goal, start, what)
        acquire()
        self.abandoned(what)

    def wait_rest(self, what: str, start: float) -> None:
        """Go on with a wait for our last post that began at `start` (perf_counter) and has
        spun and yielded already (the compiled core's short wait): block until every local
        rank has posted, within the deadline from `start`.
        """
        q, at, goal = self._q, self._posted_at, self.posts
        pending = [j for j in self._others if q[at[j]] < goal]
        if pending:
            self._sleep(pending, goal, start, what)
        acquire()

    def abandon(self) -> None:
        """Mark this rank as gone from the job: a late peer must not complete a call with it."""
        try:
            self._q[self._gone_at[self.index]] = 1
        except ValueError:
            return  # closed already
        full_fence()

    def abandoned(self, what: str) -> None:
        """Raise when a local peer has left the job (failed or gave up), even after it posted."""
        q, gone = self._q, self._gone_at
        for j in self._others:
            if q[gone[j]]:
                _await_reason(self._check)
                raise PeerAbortedError(f"{what}: {self.names(j)} on this host left the job "
                                       "(it failed or gave up; its own error says why)")
    def _sleep(self, pending: list[int], goal: int, start: float, what: str) -> None:
        q, at, me = self._q, self._posted_at, self._sleep_at[self.index]
        deadline = start + self.timeout
        next_live = start + LIVENESS_SECONDS
        while True:
            q[me] = 1
            full_fence()
            pending = [j for j in pending if q[at[j]] < goal]
            if not pending:
                q[me] = 0
                return
            self._check()
            now = time.perf_counter()
            if now >= next_live:
                next_live = now + LIVENESS_SECONDS
                self._liveness(pending, what)
            if now >= deadline:
                q[me] = 0
                who = ", ".join(self.names(j) for j in pending)
                raise CommTimeoutError(f"{what}: {who} sent nothing within {self.timeout:g} s "
                                       "(shared memory)")
            select.select([self._wake], [], [], min(SLEEP_SECONDS, deadline - now))
            q[me] = 0
            try:
                while self._wake.recv(64):
                    pass
            except OSError:
                pass

    def _liveness(self, pending: list[int], what: str) -> None:
        for j in pending:
            if not alive(self.pids[j]):
                raise PeerError(f"{what}: {self.names(j)} (pid {self.pids[j]}) on this host "
                                "exited during the call")

    def close(self) -> None:
        """Release this rank's mapping and wake-up socket (the name is long gone)."""
        for link in self._links.values():
            link.close()
        if self.core is not None:
            self.core.close()
        self._wake.close()
        for s in self._wake_out:
            if s is not None:
                s.close()
        self._q.release()
        del self.slots, self.halves, self._raw
        try:
            self.mem.close()
        except BufferError:
            pass  # an array still views it; the mapping goes with the process


class ShmLink(Link):
    """A link between two ranks of one host: a channel each way in their shared segment.

    Each end writes its own line of a channel: the sender its `head` (bytes
    written so far) and its sleeping flag, the receiver its `tail` (bytes read)
    and its sleeping flag. Counters only grow (64 bits never wrap), so
    `head - tail` is what the channel holds.
    """

    kind = "shm"

    def __init__(self, sh: Shared, j: int, k: int = 0) -> None:
        super().__init__(sh.names(j), sh.timeout)
        self.sh = sh
        self.j = j
        self.cap = sh.cap
        self._mask = sh.cap - 1
        # Bytes moved per step: a quarter of the channel, so that the receiver copies one
        # piece out while the sender copies the next one in.
        self._piece = max(1, sh.cap // 4)
        self._mv = memoryview(sh.mem)
        self._q = sh._q
        out, inn = sh.channel_at(sh.index, j, k), sh.channel_at(j, sh.index, k)
        # Words: the sender's line holds head and its sleeping flag, the receiver's tail and its.
        self._out_head, self._out_sleep = out // 8, out // 8 + 1
        self._out_tail, self._out_peer_sleep = (out + LINE) // 8, (out + LINE) // 8 + 1
        self._in_head, self._in_peer_sleep = inn // 8, inn // 8 + 1
        self._in_tail, self._in_sleep = (inn + LINE) // 8, (inn + LINE) // 8 + 1
        self._out_data, self._in_data = out + 2 * LINE, inn + 2 * LINE
        self._spin = sh._spin
        self._gone = sh._gone_at[j]
        self._next_live = 0.0
        self._shut = False  # set by shutdown: every wait on the link fails from then on
        self._out, self._in = out, inn
        # Wake-up sockets: one for a sender waiting for room, one for a receiver waiting for data.
        me, peer = sh.index, j
        self._names = [_wake_address(sh.wakes, _link_tag(k, me, peer, write))
                       for write in (True, False)]
        self._socks = [_bound(name) for name in self._names]
        # Where the other end waits: for data (woken by our sends), for room (by our receives).
        self._peer_names = [_wake_address(sh.wakes, _link_tag(k, peer, me, write))
                            for write in (False, True)]
        # Connected in `join`: to the peer's reader and writer, and to our own two (shutdown).
        self._to_reader: socket.socket | None = None
        self._to_writer: socket.socket | None = None
        self._to_self: list[socket.socket] = []
        self.core: Any = None  # the compiled core's end, made in `join`

    def join(self) -> None:
        """Connect to the wake-up sockets of both ends (every one is bound by now)."""
        self._to_reader, self._to_writer = (_connected(n) for n in self._peer_names)
        self._to_self = [_connected(n) for n in self._names]
        # The compiled core's end of the same channels (whole small messages), where it is built.
        if native.CORE is not None:
            self.core = native.CORE.Channel(self.sh.mem, self._out, self._in, self.cap,
                                            self._to_reader.fileno(), self._to_writer.fileno())

    # -- moving bytes ----------------------------------------------------------------------

    def send_some(self, data: memoryview, op: str) -> int:
        q = self._q
        head = q[self._out_head]  # this end's own word: only it writes there
        free = self.cap - (head - q[self._out_tail])
        n = min(free, len(data), self._piece)
        if n <= 0:
            return 0
        acquire()  # the receiver's reads of that room are done
        pos = head & self._mask
        first = min(n, self.cap - pos)
        at = self._out_data + pos
        self._mv[at:at + first] = data[:first]
        if n > first:
            self._mv[self._out_data:self._out_data + n - first] = data[first:n]
        release()
        q[self._out_head] = head + n
        full_fence()
        if q[self._out_peer_sleep]:
            _wake(self._to_reader)
        return n

    def recv_some(self, view: memoryview, op: str) -> int:
        q = self._q
        tail = q[self._in_tail]  # this end's own word
        n = min(q[self._in_head] - tail, len(view), self._piece)
        if n <= 0:
            return 0
        acquire()
        pos = tail & self._mask
        first = min(n, self.cap - pos)
        at = self._in_data + pos
        view[:first] = self._mv[at:at + first]
        if n > first:
            view[first:n] = self._mv[self._in_data:self._in_data + n - first]
        release()  # the reads are done before the sender may write there again
        q[self._in_tail] = tail + n
        full_fence()
        if q[self._in_peer_sleep]:
            _wake(self._to_writer)
        return n

    def send(self, data: memoryview | bytes, op: str) -> None:
        self._all(memoryview(data).cast("B"), op, True)

    def recv_into(self, view: memoryview, op: str) -> None:
        self._all(view, op, False)

    def _all(self, view: memoryview, op: str, write: bool) -> None:
        """Move all of `view` (send it with `write`, else fill it); the deadline runs from now."""
        move = self.send_some if write else self.recv_some
        done, n = 0, len(view)
        start = time.perf_counter()
        # No polling for a call run in the background (async_op): the caller computes meanwhile.
        spin = self._spin if threading.current_thread() is _MAIN else 0.0
        while done < n:
            k = move(view[done:], op)
            done += k
            if not k:
                wait([(self, write)], op, spin, start, partial(self._late, write, done, n))

    def _late(self, write: bool, done: int, n: int) -> str:
        """Say what the peer did not do in time."""
        return (f"{self.peer} {'took' if write else 'sent'} {done} of {n} bytes within "
                f"{self.timeout:g} s (shared memory)")

    # -- waiting -----------------------------------------------------------------------------

    def ready(self, write: bool) -> bool:
        q = self._q
        if write:
            return q[self._out_head] - q[self._out_tail] < self.cap
        return q[self._in_head] != q[self._in_tail]

    def arm(self, write: bool) -> bool:
        self._q[self._out_sleep if write else self._in_sleep] = 1
        full_fence()
        return self.ready(write)

    def disarm(self, write: bool) -> None:
        self._q[self._out_sleep if write else self._in_sleep] = 0
        sock = self._socks[0 if write else 1]
        try:
            while sock.recv(64):
                pass
        except OSError:
            pass

    def readiness(self, write: bool) -> tuple[int, int]:
        return self._socks[0 if write else 1].fileno(), select.POLLIN

    def rechecks(self) -> bool:
        return True

    def check(self, op: str) -> None:
        self.sh._check()
        if self._shut:
            raise PeerError(f"{op}: the link to {self.peer} was shut down after a failure")
        if self._q[self._gone]:
            _await_reason(self.sh._check)
            raise PeerAbortedError(f"{op}: {self.peer} on this host left the job (it failed or "
                                   "gave up; its own error says why)")
        now = time.perf_counter()
        if now >= self._next_live:
            self._next_live = now + LIVENESS_SECONDS
            pid = self.sh.pids[self.j]
            if not alive(pid):
                raise PeerError(f"{op}: {self.peer} (pid {pid}) on this host exited")

    def shutdown(self) -> None:
        self._shut = True
        if self.core is not None:
            self.core.shut()
        for s in self._to_self:  # a waiter of this process wakes and fails at once
            _wake(s)

    def close(self) -> None:
        if self.core is not None:
            self.core.close()
        try:
            self._mv.release()
        except BufferError:
            pass  # a view of it is still alive; the mapping goes with the process
        for s in [*self._socks, *self._to_self, self._to_reader, self._to_writer]:
            if s is not None:
                s.close()


def _link_tag(k: int, me: int, peer: int, write: bool) -> str:
    """Return the wake-up socket tag of local rank `me`'s end of its link `k` to `peer`."""
    return f"{k}.{me}.{peer}{'w' if write else 'r'}"
