"""Failures on the ring backend: mismatched calls, dead and silent peers, strangers, huge messages.

None of them may hang: every rank raises an error that names the op and the
ranks involved, within seconds, and nothing outlives the job.
"""

from __future__ import annotations

import re

import pytest

from tests.harness import Job, available_gib, run_direct, run_ranks

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode, what", [
    ("shape", "the shapes differ"),
    ("dtype", "the dtypes differ"),
    ("op", "the operations differ"),
    ("skip", "the operations differ"),
    ("root", "the roots differ"),
])
@pytest.mark.parametrize("path", ["small", "large"])
def test_a_mismatch_raises_on_every_rank(mode: str, what: str, path: str) -> None:
    job = run_ranks(3, "mismatch.py", mode, path, RINGCOMM_TIMEOUT="30", timeout=60)
    assert job.returncode == 0, job.stderr[-2000:]
    lines = job.lines("rank ")
    assert len(lines) == 3, job.stdout + job.stderr[-2000:]
    for line in lines:
        assert "MismatchError" in line, line
        assert what in line, line  # what differed
        assert "rank 1 called" in line or "but rank 1" in line, line  # who differed
        assert re.search(r"all_sum|all_gather|all_max|broadcast", line), line
        assert float(re.search(r"after ([\d.]+)s", line).group(1)) < 5, line


@pytest.mark.parametrize("mode, what", [
    ("shape", "the shapes differ"),
    ("dtype", "the dtypes differ"),
    ("skip", "the operations differ"),
])
@pytest.mark.parametrize("core", ["native", "python"])
def test_two_ranks_over_sockets_check_every_small_call(mode: str, what: str, core: str) -> None:
    # Two ranks joined by TCP: a small all_sum is one call of the compiled core's exchange
    # (or Python's loop); a header that differs is still an error naming the other's call.
    job = run_ranks(2, "mismatch.py", mode, "small", RINGCOMM_TIMEOUT="30", timeout=60,
                    RINGCOMM_TRANSPORT="tcp", RINGCOMM_NATIVE="1" if core == "native" else "0")
    assert job.returncode == 0, job.stderr[-2000:]
    lines = job.lines("rank ")
    assert len(lines) == 2, job.stdout + job.stderr[-2000:]
    for r, line in enumerate(sorted(lines)):
        assert "MismatchError" in line and what in line, line
        assert re.search(rf"rank {r} called .* but rank {1 - r} called", line), line
        assert float(re.search(r"after ([\d.]+)s", line).group(1)) < 5, line


@pytest.mark.parametrize("core", ["native", "python"])
def test_two_ranks_over_sockets_name_a_dead_or_silent_peer(core: str) -> None:
    native = {"RINGCOMM_TRANSPORT": "tcp", "RINGCOMM_NATIVE": "1" if core == "native" else "0"}
    # Rank 1 exits in a loop of 4-byte all_sums: rank 0 says so within seconds.
    ranks = run_direct(2, "die.py", "small", timeout=60, RINGCOMM_TIMEOUT="60", **native)
    assert ranks[1].returncode == 1
    kind, seconds, message = _outcome(ranks[0], 0)
    assert kind.startswith("Peer") and "rank 1 (127.0.0.1:" in message, (kind, message)
    assert seconds < 5, message
    # Rank 1 sleeps past the deadline: rank 0's wait ends at it, naming rank 1.
    timeout = 2
    ranks = run_direct(2, "silent.py", "8", timeout=60, RINGCOMM_TIMEOUT=str(timeout), **native)
    kind, seconds, message = _outcome(ranks[0], 0)
    assert kind == "CommTimeoutError", message
    assert timeout - 0.1 <= seconds < timeout + 1, (seconds, message)
    assert re.fullmatch(rf"all_sum: rank 1 \(127\.0\.0\.1:\d+\) sent nothing within {timeout} s",
                        message), message


def test_a_dead_peer_raises_within_5s_on_every_survivor() -> None:
    ranks = run_direct(3, "die.py", timeout=60, RINGCOMM_TIMEOUT="60")
    assert ranks[1].returncode == 1
    for r in (0, 2):
        out = ranks[r].stdout.strip()
        assert out.startswith(f"rank {r}: Peer"), (out, ranks[r].stderr[-2000:])
        assert "rank 1" in out, out  # the dead rank is named, with its address
        assert "127.0.0.1:" in out, out
        assert float(re.search(r"after ([\d.]+)s", out).group(1)) < 5, out


def test_a_dead_peer_ends_the_launched_job_with_its_exit_code() -> None:
    job = run_ranks(3, "die.py", timeout=60)
    assert job.returncode == 1
    assert "rank 1 failed first: exit code 1" in job.stderr, job.stderr
    assert job.seconds < 30


def _outcome(job: Job, rank: int) -> tuple[str, float, str]:
    """Return (error type, seconds, message) from a rank's `rank R: <Error> after <s>s: ...` line."""
    m = re.fullmatch(r"rank (\d+): (\w+) after ([\d.]+)s: (.*)", job.stdout.strip())
    assert m and int(m[1]) == rank, (rank, job.stdout, job.stderr[-1500:])
    return m[2], float(m[3]), m[4]


@pytest.mark.parametrize("transport", ["tcp", "auto"])
def test_a_silent_peer_ends_the_wait_at_the_deadline_on_every_rank(transport: str) -> None:
    timeout = 2
    ranks = run_direct(3, "silent.py", "8", timeout=60, RINGCOMM_TIMEOUT=str(timeout),
                       RINGCOMM_TRANSPORT=transport)
    # Rank 2 waits on the silent rank 1 and names it. Over TCP rank 0 waits on rank 2 (the
    # ring's order) and names it, or learns first from rank 2's abort, which names rank 1; in
    # shared memory every rank waits on every other and names rank 1 itself. There ranks 0 and
    # 2 reach their deadlines within a millisecond or two of each other, so rank 2 may learn
    # of rank 1's silence from rank 0's notice just before its own deadline: either way, at
    # the deadline and naming rank 1.
    shm = r" \(shared memory\)" if transport == "auto" else ""
    silent = rf"all_sum: rank 1 \(127\.0\.0\.1:\d+\) sent nothing within {timeout} s{shm}"
    kind, seconds, message = _outcome(ranks[2], 2)
    assert timeout - 0.1 <= seconds < timeout + 1, (seconds, message)
    if kind == "PeerAbortedError" and shm:
        assert re.fullmatch(rf"all_sum: rank 0 failed in all_sum: {silent}", message), message
    else:
        assert kind == "CommTimeoutError", message
        assert re.fullmatch(silent, message), message
    kind, seconds, message = _outcome(ranks[0], 0)
    assert timeout - 0.1 <= seconds < timeout + 1, (seconds, message)
    if kind == "CommTimeoutError":
        waited = 1 if shm else 2
        assert re.fullmatch(rf"all_sum: rank {waited} \(127\.0\.0\.1:\d+\) sent nothing "
                            rf"within {timeout} s{shm}", message), message
    else:
        assert kind == "PeerAbortedError", (kind, message)
    # Woken, the silent rank finds that the others gave up (their abort notices) and says why.
    kind, seconds, message = _outcome(ranks[1], 1)
    assert kind == "PeerAbortedError" and seconds < 1, (kind, seconds, message)
    assert re.match(r"rank [02] failed in all_sum: ", message), message


def test_a_stranger_is_refused_and_the_job_goes_on() -> None:
    job = run_ranks(3, "foreign.py", timeout=60)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "stranger refused" in job.stdout
    assert len(job.lines("rank ")) == 4  # the refusal and three results
    assert "refused a connection" in job.stderr and "not a ringcomm connection" in job.stderr


@pytest.mark.timeout(300)
@pytest.mark.skipif(available_gib() < 10, reason="moves > 2 GiB per rank and needs about "
                    "9 GiB of memory; this machine has less available")
def test_messages_over_2_gib_arrive_whole() -> None:
    job = run_ranks(2, "large.py", timeout=280)
    assert job.returncode == 0, job.stderr[-2000:]
    assert len(job.lines("rank ")) == 2, job.stdout
