"""Strangers: the job's key under engines without a token, the handshake's one deadline, and
local wake-ups that no other user can bind or reach."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pwd
import select
import signal
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ringcomm.backends.ring import jobkey
from ringcomm.errors import InitError
from ringcomm.transport import handshake, shm
from ringcomm.transport.handshake import Gate, HandshakeError, Hello, Kind
from tests import harness
from tests.harness import env, run_direct, run_together, script


def _torch_env(rank: int, size: int, port: int, **extra: str) -> dict[str, str]:
    # torchrun's defaults: TORCHELASTIC_RUN_ID is the literal "none".
    return env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
               WORLD_SIZE=str(size), TORCHELASTIC_RUN_ID="none", **extra)


def _public_keys(port: int, size: int) -> list[bytes]:
    """Keys anyone could derive from a torchrun job's public facts, before and now."""
    identity = f"rendezvous:torch:none:127.0.0.1:{port + 1}:{size}".encode()
    return [hashlib.sha256(b"ringcomm-rendezvous:none").digest(),
            hashlib.sha256(b"ringcomm-rendezvous:" + f"127.0.0.1:{port}:{size}".encode()).digest(),
            hashlib.sha256(b"ringcomm-open:" + identity).digest()]


def _knock(host: str, port: int, key: bytes, hello: Hello) -> str:
    """Try a handshake with `key`; return 'refused' or 'admitted'."""
    with socket.create_connection((host, port), timeout=5) as s:
        try:
            handshake.client(s, key, hello, time.monotonic() + 5)
        except HandshakeError:
            return "refused"
    return "admitted"


def _until(ready: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


def _wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


# -- 1. a secret by default ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_torchruns_default_variables_give_a_key_no_stranger_can_derive(tmp_path: Path) -> None:
    port, keys = harness.free_port_pair(), tmp_path / "keys"
    extra = {"RINGCOMM_KEY_DIR": str(keys), "STRANGER_DIR": str(tmp_path), "RINGCOMM_TIMEOUT": "30"}
    argv = [sys.executable, script("stranger.py")]
    marker = uuid.uuid4().hex
    with harness.Started(argv, environ=_torch_env(0, 2, port, **extra), marker=marker) as r0:
        # Rank 0 waits at its rendezvous for rank 1: a stranger with a public key knocks there.
        harness.wait_listening(port + 1, 20, "rank 0's rendezvous")
        for key in _public_keys(port, 2):
            assert _knock("127.0.0.1", port + 1, key, Hello(Kind.RDZV, 1, 0)) == "refused"
        key_file = next(keys.iterdir())
        assert stat.S_IMODE(keys.stat().st_mode) == 0o700
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with harness.Started(argv, environ=_torch_env(1, 2, port, **extra), marker=marker) as r1:
            _wait_for(tmp_path / "address", 30)
            host, ring_port = (tmp_path / "address").read_text().rsplit(":", 1)
            # The ring listener, as a port scan finds it: rank 1's send_object connection.
            for key in _public_keys(port, 2):
                assert _knock(host, int(ring_port), key, Hello(Kind.P2P, 1, 0)) == "refused"
            (tmp_path / "go").touch()
            jobs = [r0.wait(30), r1.wait(30)]
    harness.assert_none_survive(marker)
    for job in jobs:
        assert job.returncode == 0, job.stderr[-2000:]
    assert "rank 0: received {'from': 'rank 1'}" in jobs[0].stdout
    assert "RINGCOMM_TOKEN is not set" not in jobs[0].stderr  # no weak key to warn about
    assert list(keys.iterdir()) == []  # rank 0 removed the key once every rank had it


@pytest.mark.timeout(60)
def test_a_rank_that_cannot_see_rank_0s_key_says_how_to_set_a_token(tmp_path: Path) -> None:
    port = harness.free_port_pair()
    t0 = time.monotonic()
    code = "import ringcomm; ringcomm.init()"
    jobs = run_together([([sys.executable, "-c", code],
                          _torch_env(r, 2, port, RINGCOMM_TIMEOUT="3",
                                     RINGCOMM_KEY_DIR=str(tmp_path / f"host{r}")))
                         for r in (0, 1)], timeout=30)
    assert time.monotonic() - t0 < 3 + 5
    assert jobs[1].returncode == 1
    err = jobs[1].stderr
    assert "rank 1: rank 0 wrote no key to" in err and str(tmp_path / "host1") in err, err[-1500:]
    assert "RINGCOMM_TOKEN" in err and "RINGCOMM_UNAUTHENTICATED=1" in err
    assert jobs[0].returncode == 1 and "rank(s) 1 of 2 never arrived" in jobs[0].stderr


@pytest.mark.timeout(60)
def test_a_job_without_a_secret_runs_only_by_choice_and_refuses_to_unpickle() -> None:
    code = ("import ringcomm, numpy as np\n"
            "w = ringcomm.init()\n"
            "print('sum', ringcomm.all_sum(np.ones(2))[0], flush=True)\n"
            "try:\n"
            "    got = ringcomm.all_gather_object(w.rank())\n"
            "except ringcomm.RingcommError as e:\n"
            "    print('refused:', e, flush=True)\n"
            "else:\n"
            "    print('objects', got, flush=True)\n")
    for extra, expect in (({}, "refused:"), ({"RINGCOMM_UNAUTHENTICATED_PICKLE": "1"},
                                              "objects [0, 1]")):
        port = harness.free_port_pair()
        jobs = run_together([([sys.executable, "-c", code],
                              _torch_env(r, 2, port, RINGCOMM_UNAUTHENTICATED="1", **extra))
                             for r in (0, 1)], timeout=30)
        for job in jobs:
            assert job.returncode == 0, job.stderr[-1500:]
            assert "sum 2.0" in job.stdout and expect in job.stdout, job.stdout
        assert "anyone who reaches its ports can join it" in jobs[0].stderr
        if not extra:
            assert "RINGCOMM_UNAUTHENTICATED_PICKLE=1" in jobs[0].stdout


def test_the_key_file_is_this_users_alone(tmp_path: Path) -> None:
    keys = jobkey.KeyFile({"RINGCOMM_KEY_DIR": str(tmp_path / "k")}, b"job")
    secret = keys.publish()
    assert len(secret) == jobkey.KEY_BYTES and keys.read() == secret
    assert stat.S_IMODE(os.stat(keys.path).st_mode) == 0o600
    os.chmod(keys.path, 0o644)
    with pytest.raises(InitError, match="not this user's alone"):
        keys.read()
    os.chmod(keys.path, 0o600)
    os.chmod(keys.directory, 0o755)
    with pytest.raises(InitError, match="open to other users"):
        keys.read()


def test_a_key_left_by_an_earlier_run_is_passed_over_for_rank_0s_new_one(tmp_path: Path) -> None:
    environ = {"RINGCOMM_KEY_DIR": str(tmp_path)}
    old = jobkey.KeyFile(environ, b"job").publish()  # a run that was killed left it
    fresh: list[bytes] = []

    def rank_0_later() -> None:
        time.sleep(0.3)
        fresh.append(jobkey.KeyFile(environ, b"job").publish())

    threading.Thread(target=rank_0_later).start()
    key, keys = jobkey.from_environment(environ, 1, b"job", "test", time.monotonic() + 10,
                                        lambda secret: secret != old)
    assert keys is None and key.authenticated and key.secret == fresh[0] != old


# -- 2. the handshake's one deadline ---------------------------------------------------------


def test_dripping_strangers_are_dropped_at_the_deadline_and_hold_no_rank_back() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    addr = listener.getsockname()
    admitted: list[Hello] = []
    gate = Gate([listener], b"k", lambda s, hello, peer: (admitted.append(hello), s.close()),
                label="test", seconds=2.0, first_bytes=1.0)
    strangers = [socket.create_connection(addr, timeout=5)
                 for _ in range(handshake.MAX_PENDING // 2)]
    try:
        started = time.monotonic()
        for s in strangers:
            s.sendall(handshake.MAGIC)
        for _ in range(3):  # one byte now and then: each receive would restart a per-recv timeout
            time.sleep(0.3)
            for s in strangers:
                s.send(b"x")
        t0 = time.monotonic()
        with socket.create_connection(addr, timeout=5) as s:
            handshake.client(s, b"k", Hello(Kind.P2P, 3, 0), time.monotonic() + 5)
        assert time.monotonic() - t0 < 0.5
        for s in strangers:
            s.settimeout(max(0.1, started + 2.0 + 1.0 - time.monotonic()))
            try:
                assert s.recv(64) == b""
            except ConnectionResetError:
                pass
        assert time.monotonic() - started < 2.0 + 1.0
        _until(lambda: bool(admitted), 2.0)
        assert [h.src for h in admitted] == [3]
        assert gate.refused == len(strangers)
    finally:
        for s in strangers:
            s.close()
        gate.close()


def test_more_strangers_than_places_push_out_the_oldest_not_the_rank() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    addr = listener.getsockname()
    admitted: list[Hello] = []
    gate = Gate([listener], b"k", lambda s, hello, peer: (admitted.append(hello), s.close()),
                label="test", seconds=30.0, first_bytes=30.0)
    strangers = []
    try:
        for _ in range(handshake.MAX_PENDING + 20):
            s = socket.create_connection(addr, timeout=5)
            s.sendall(handshake.MAGIC)
            strangers.append(s)
        with socket.create_connection(addr, timeout=5) as s:
            handshake.client(s, b"k", Hello(Kind.RING, 1, 0), time.monotonic() + 5)
        _until(lambda: bool(admitted), 2.0)  # the gate files it just after its answer
        assert [h.src for h in admitted] == [1]
    finally:
        for s in strangers:
            s.close()
        gate.close()


@pytest.mark.timeout(90)
def test_strangers_that_drip_into_a_listener_do_not_stop_the_first_send() -> None:
    jobs = run_direct(2, "drip.py", timeout=60, RINGCOMM_TRANSPORT="tcp")
    for job in jobs:
        assert job.returncode == 0, job.stderr[-2000:]
    first = float(jobs[0].stdout.split("first send took ")[1].split()[0])
    assert first < 2.0, jobs[0].stdout
    assert "strangers still held after 10 s: 0 of 40" in jobs[0].stdout


def test_a_handshake_that_gets_no_answer_is_a_ringcomm_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as s:
            t0 = time.monotonic()
            with pytest.raises(handshake.CommTimeoutError, match="no answer"):
                handshake.client(s, b"k", Hello(Kind.P2P, 0, 0), time.monotonic() + 0.5)
            assert time.monotonic() - t0 < 1.5
    finally:
        listener.close()


@pytest.mark.timeout(90)
def test_strangers_at_the_rendezvous_hold_no_thread_and_the_ranks_still_meet(tmp_path: Path) -> None:
    port = harness.free_port_pair()
    extra = {"RINGCOMM_KEY_DIR": str(tmp_path / "keys"), "RINGCOMM_TIMEOUT": "30"}
    code = ("import numpy as np, ringcomm\nw = ringcomm.init()\n"
            "print('sum', ringcomm.all_sum(np.ones(2))[0], flush=True)\n")
    marker = uuid.uuid4().hex
    strangers: list[socket.socket] = []
    try:
        with harness.Started([sys.executable, "-c", code], environ=_torch_env(0, 2, port, **extra),
                             marker=marker) as r0:
            harness.wait_listening(port + 1, 20, "rank 0's rendezvous")
            for _ in range(100):  # each sends the magic, then nothing: a thread each, before
                s = socket.create_connection(("127.0.0.1", port + 1), timeout=5)
                s.sendall(handshake.MAGIC)
                strangers.append(s)
            time.sleep(0.5)
            with open(f"/proc/{r0.pid}/status") as f:
                threads = int(next(ln for ln in f if ln.startswith("Threads:")).split()[1])
            assert threads < 12, f"rank 0 runs {threads} threads with 100 strangers at its door"
            with harness.Started([sys.executable, "-c", code],
                                 environ=_torch_env(1, 2, port, **extra), marker=marker) as r1:
                jobs = [r0.wait(30), r1.wait(30)]
    finally:
        for s in strangers:
            s.close()
    harness.assert_none_survive(marker)
    for job in jobs:
        assert job.returncode == 0 and "sum 2.0" in job.stdout, job.stderr[-2000:]
    assert "refused a connection" in jobs[0].stderr  # logged once, then counted


# -- 3. local wake-ups -----------------------------------------------------------------------


def _as_nobody(code: str) -> str:
    """Run Python `code` in a child process that became the user nobody; return its output.

    A fork, not a new interpreter: this machine's Python may be one nobody cannot execute.
    """
    nobody = pwd.getpwnam("nobody")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(code, {})
            os.write(w, out.getvalue().encode())
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    # A deadline on the child: a fork of a process with threads (JAX's, once a test imported
    # it) could deadlock in the child, and then this test fails instead of hanging.
    deadline = time.monotonic() + 60
    chunks: list[bytes] = []
    with os.fdopen(r, "rb") as f:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([f], [], [], left)[0]:
                chunk = os.read(f.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    text = b"".join(chunks).decode()
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"the child acting as nobody did not finish within 60 s: {text}")
    assert os.waitstatus_to_exitcode(done[1]) == 0, text
    return text


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def test_a_wake_up_directory_is_private_and_checked(tmp_path: Path) -> None:
    d = shm.wake_directory()
    try:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        shm.check_wake_directory(d)
        os.chmod(d, 0o755)
        with pytest.raises(OSError, match="not a private directory"):
            shm.check_wake_directory(d)
    finally:
        shm.remove_wake_directory(d)
    assert not os.path.exists(d)


@needs_root
@pytest.mark.timeout(90)
def test_no_other_user_can_bind_or_reach_a_jobs_wake_up_sockets(tmp_path: Path) -> None:
    code = ("import os, time, numpy as np, ringcomm\n"
            "w = ringcomm.init()\n"
            f"d = {str(tmp_path)!r}\n"
            "open(os.path.join(d, f'pid{w.rank()}'), 'w').write(str(os.getpid()))\n"
            "while not os.path.exists(os.path.join(d, 'go')): time.sleep(0.05)\n"
            "y = ringcomm.all_sum(np.full(10_000, w.rank() + 1.0))\n"
            "assert (y == 10.0).all(), y\n"
            "print('ok', ringcomm.group.world()._backend.path, flush=True)\n")
    marker = uuid.uuid4().hex
    argv = [*harness.launch_argv("-n", "4"), sys.executable, "-c", code]
    with harness.Started(argv, environ=env(), marker=marker) as job:
        for r in range(4):
            _wait_for(tmp_path / f"pid{r}", 30)
        pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(4)]
        inodes = set()
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        names = []
        with open("/proc/net/unix") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[6] in inodes and len(parts) > 7:
                    names.append(parts[7])
        # Every wake-up socket was bound by path in a private directory, and that is gone:
        # nothing in the abstract namespace, no name on disk another user could reach.
        assert names, "the ranks hold no named unix socket: the test sees nothing"
        assert not [n for n in names if n.startswith("@")], names
        assert not [n for n in names if os.path.exists(n)], names
        # What another user can do: bind the names the wake-ups once had (from the segment's
        # name, which /dev/shm shows), and send to every path the ranks' sockets were bound to.
        probe = ("import socket, sys\n"
                 f"names = {names!r}\n"
                 f"pids = {pids!r}\n"
                 "bound = []\n"
                 "for pid in pids:\n"
                 "    for i in range(8):\n"
                 "        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                 "        try:\n"
                 "            s.bind(f'\\0ringcomm-{pid}-{i}')\n"
                 "            bound.append(s)\n"
                 "        except OSError:\n"
                 "            pass\n"
                 "reached = 0\n"
                 "for n in names:\n"
                 "    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
                 "    try:\n"
                 "        s.sendto(b'x', n)\n"
                 "        reached += 1\n"
                 "    except OSError:\n"
                 "        pass\n"
                 "print('reached', reached)\n")
        assert _as_nobody(probe).split() == ["reached", "0"]
        (tmp_path / "go").touch()
        result = job.wait(60)
    harness.assert_none_survive(marker)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("ok shm-") == 4, result.stdout


@pytest.mark.timeout(90)
def test_wake_ups_that_cannot_be_made_leave_the_group_on_tcp_with_a_warning(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # over the 108 bytes a socket's path may hold
    deep.mkdir(parents=True)
    code = ("import numpy as np, ringcomm\n"
            "w = ringcomm.init()\n"
            "y = ringcomm.all_sum(np.full(10_000, w.rank() + 1.0))\n"
            "assert (y == 3.0).all(), y\n"
            "print('ok', ringcomm.group.world()._backend.path, flush=True)\n")
    job = harness.run([*harness.launch_argv("-n", "2"), sys.executable, "-c", code],
                      timeout=60, environ=env(TMPDIR=str(deep)))
    assert job.returncode == 0, job.stderr[-2000:]
    assert "too long for socket names: set TMPDIR to a shorter one" in job.stderr
    assert "the world group uses TCP" in job.stderr
    assert job.stdout.count("ok tcp-") == 2, job.stdout
    assert not [n for n in os.listdir(deep) if n.startswith(shm.WAKE_PREFIX)]
