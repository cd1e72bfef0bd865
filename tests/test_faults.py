"""Injected faults on the ring: every rank raises the right error, in time, and nothing survives.

The ranks run tests/ranks/faults.py without the launcher (so that the
launcher's stopping of the others cannot hide what each rank does alone),
except where the launcher's own report is the subject.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from tests.harness import ROOT, Job, env, launch_argv, run, run_direct, run_ranks

pytestmark = pytest.mark.timeout(120)


def _outcome(job: Job, rank: int) -> tuple[str, float, str]:
    """Return (error type or 'ok', seconds, message) from a rank's report line."""
    lines = [ln for ln in job.stdout.splitlines() if ln.startswith(f"rank {rank}: ")]
    assert len(lines) == 1, (rank, job.stdout, job.stderr[-2000:])
    m = re.match(r"rank \d+: (\w+) after ([\d.]+)s:? ?(.*)", lines[0])
    assert m, lines[0]
    return m.group(1), float(m.group(2)), m.group(3)


@pytest.mark.parametrize("fault, odd_one, words", [
    ("recv_vs_sum", 1, ["all_sum against recv", "rank 1 called recv from rank 0",
                        "rank 0 called all_sum"]),
    ("skip_then_p2p", 1, ["all_sum against recv", "rank 1 called recv from rank 0"]),
    ("send_vs_sum", 1, ["all_sum against send", "rank 1 called send to rank 0"]),
    ("recv_recv", None, ["recv cycle", "waits in recv from", "must send first"]),
])
def test_a_send_or_recv_against_another_call_is_a_mismatch_on_every_rank(
        fault: str, odd_one: int | None, words: list[str]) -> None:
    ranks = run_direct(3, "faults.py", fault, timeout=60, RINGCOMM_TIMEOUT="30")
    for r, job in enumerate(ranks):
        kind, seconds, message = _outcome(job, r)
        assert kind == "MismatchError", (r, kind, message)
        assert seconds < 5, (r, seconds, message)
        for w in words:
            assert w in message, (r, w, message)
        assert job.returncode == 1


def test_two_ranks_blocked_sending_to_each_other_is_a_mismatch_on_both() -> None:
    ranks = run_direct(2, "faults.py", "send_send", timeout=60, RINGCOMM_TIMEOUT="30")
    for r, job in enumerate(ranks):
        kind, seconds, message = _outcome(job, r)
        assert kind == "MismatchError" and seconds < 5, (r, kind, seconds, message)
        assert "send against send" in message and "neither receives" in message, message


def test_a_blocked_send_ends_within_the_timeout_plus_one_second() -> None:
    ranks = run_direct(2, "faults.py", "blocked_send", "8", timeout=60, RINGCOMM_TIMEOUT="3")
    kind, seconds, message = _outcome(ranks[0], 0)
    assert kind == "CommTimeoutError", message
    assert 3 <= seconds < 4, (seconds, message)
    assert "rank 1" in message and "within 3 s" in message, message
    # The receiver learns why when it finally calls recv.
    kind, _, message = _outcome(ranks[1], 1)
    assert kind == "PeerAbortedError" and "rank 0 failed in send" in message, message


# auto: the three ranks share memory; tcp: the ring's sockets; links: ranks 0 and 1 on one
# host, rank 2 on another (a second loopback address), so the ring joins 0 and 1 through a
# shared-memory link and the rest through sockets.
LAYOUTS = {"auto": {}, "tcp": {"RINGCOMM_TRANSPORT": "tcp"},
           "links": {"ips": ["127.0.0.1", "127.0.0.1", "127.0.0.2"]}}


@pytest.mark.parametrize("layout", ["auto", "links"])
def test_a_frozen_rank_is_named_by_the_survivors_and_by_a_stall_line(layout: str) -> None:
    ranks = run_direct(3, "faults.py", "frozen", "9", timeout=60, RINGCOMM_TIMEOUT="6",
                       RINGCOMM_STALL_SECONDS="1", **LAYOUTS[layout])  # type: ignore[arg-type]
    # Woken after the others gave up, the frozen rank finds them gone and raises at once.
    kind, seconds, message = _outcome(ranks[1], 1)
    assert kind in ("PeerError", "PeerAbortedError") and seconds < 12, (kind, seconds, message)
    kinds = []
    for r in (0, 2):
        kind, seconds, message = _outcome(ranks[r], r)
        kinds.append(kind)
        # With links, rank 0 (sending to frozen rank 1 through shared memory, receiving from
        # rank 2 over TCP) and rank 2 (waiting on rank 1) time out together: whichever tells
        # the other first is the cause both raise, naming rank 1 from the watch.
        assert kind in (("CommTimeoutError",) if layout == "auto" else
                        ("CommTimeoutError", "PeerAbortedError")), (r, message)
        assert 6 <= seconds < 7, (r, seconds, message)
        assert re.search(r"no answer to status queries from rank 1 \(127\.0\.0\.1:\d+\)", message), \
            message
        stall = [ln for ln in ranks[r].stderr.splitlines() if "has waited" in ln]
        assert stall, ranks[r].stderr[-2000:]
        assert f"rank {r} has waited 1 s in all_sum [call #3] of the world group" in stall[0]
        assert "not arrived: rank 1 (127.0.0.1:" in stall[0] and "not answering" in stall[0]
    assert "CommTimeoutError" in kinds, kinds


@pytest.mark.parametrize("transport", sorted(LAYOUTS))
def test_a_rank_killed_at_a_random_op_is_named_by_every_survivor(transport: str) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")  # shown on failure: rerun with this seed
    ranks = run_direct(3, "faults.py", "kill", str(seed), timeout=90, RINGCOMM_TIMEOUT="30",
                       **LAYOUTS[transport])  # type: ignore[arg-type]
    victims = [r for r, job in enumerate(ranks) if job.returncode == 3]
    assert len(victims) == 1, [j.returncode for j in ranks]
    victim = victims[0]
    for r, job in enumerate(ranks):
        if r == victim:
            continue
        kind, seconds, message = _outcome(job, r)
        assert kind in ("PeerError", "PeerAbortedError"), (seed, r, kind, message)
        assert f"rank {victim}" in message, (seed, r, message)
        assert seconds < (60 if transport == "tcp" else 2), (seed, r, seconds)


@pytest.mark.parametrize("transport", sorted(LAYOUTS))
def test_a_rank_killed_mid_collective_is_named_by_every_survivor(transport: str) -> None:
    ranks = run_direct(3, "faults.py", "kill9", timeout=90, RINGCOMM_TIMEOUT="30",
                       **LAYOUTS[transport])  # type: ignore[arg-type]
    assert ranks[1].returncode == -9, ranks[1].returncode
    for r in (0, 2):
        kind, seconds, message = _outcome(ranks[r], r)
        assert kind in ("PeerError", "PeerAbortedError"), (r, kind, message)
        assert "rank 1 " in message, (r, message)
        assert seconds < 2.5, (r, seconds, message)  # the loop's start to the error


def test_two_hundred_silent_strangers_cost_a_bounded_number_of_threads() -> None:
    job = run_ranks(3, "faults.py", "strangers", timeout=90)
    assert job.returncode == 0, job.stderr[-2000:]
    threads = {int(m.group(1)): int(m.group(2))
               for m in re.finditer(r"rank (\d+): ok .*threads (\d+)", job.stdout)}
    assert sorted(threads) == [0, 1, 2], job.stdout
    # The calling thread, the gate (every handshake of the process) and the watch: no thread
    # per stranger (there were 3 + 32 while each handshake had a thread of its own).
    assert threads[1] == 3, threads
    refusals = [ln for ln in job.stderr.splitlines() if "refused a connection" in ln]
    assert 1 <= len(refusals) <= 2, refusals


def test_a_trace_has_one_span_per_call_and_merge_joins_the_ranks(tmp_path) -> None:
    script = tmp_path / "traced.py"
    script.write_text(
        "import numpy as np, ringcomm\n"
        "w = ringcomm.init()\n"
        "ringcomm.all_sum(np.ones(4)); ringcomm.all_sum(np.ones(1 << 21, np.float32))\n"
        "ringcomm.broadcast(np.ones(3), root=1); ringcomm.barrier()\n"
        "if w.rank() == 0: ringcomm.send(np.ones(2), 1)\n"
        "if w.rank() == 1: ringcomm.recv((2,), np.float64, 0)\n")
    out = tmp_path / "trace"
    proc = run(launch_argv("-n", "2", str(script)), timeout=60, environ=env(RINGCOMM_TRACE=str(out)))
    assert proc.returncode == 0, proc.stderr
    from ringcomm import trace

    for r, last in ((0, "send"), (1, "recv")):
        events = [e for e in trace.read_events(out / f"rank{r}.json") if e.get("ph") == "X"]
        names = [e["name"] for e in events]
        assert names == ["all_sum", "all_sum", "broadcast", "barrier", last], names
        paths = [e["args"]["path"] for e in events]
        assert paths == ["shm-slot", "shm-chunked", "shm-slot", "shm-slot", "shm-p2p"], paths
        assert events[1]["args"]["bytes"] == 8 << 20
        assert all(e["dur"] >= 0 and e["args"]["wait_us"] >= 0 for e in events)
    n = trace.merge(sorted(out.glob("rank*.json")), out / "trace.json")
    merged = json.loads((out / "trace.json").read_text())
    assert len(merged["traceEvents"]) == n == 12  # 5 spans and a name per rank
    assert {e["pid"] for e in merged["traceEvents"]} == {0, 1}


def _launch(*args: str, timeout: float = 90, **extra: str) -> Job:
    return run(launch_argv(*args), timeout=timeout, environ=env(**extra))


def test_the_launchers_report_names_the_frozen_rank() -> None:
    proc = _launch("-n", "3", str(ROOT / "tests/ranks/faults.py"), "frozen", "60",
                   RINGCOMM_TIMEOUT="4")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert re.search(r"ringcomm launch: rank 1 \(127\.0\.0\.1:\d+\) stopped answering \(frozen, "
                     r"stopped, or cut off\), as rank\(s\) 0, 2 reported", proc.stderr), \
        proc.stderr[-2000:]


def test_max_restarts_resumes_a_job_that_failed_once(tmp_path) -> None:
    ckpt = tmp_path / "ckpt.npz"
    proc = _launch("-n", "2", "--max-restarts", "2", str(ROOT / "examples/resume.py"),
                   "--steps", "40", "--fail-at", "25", "--checkpoint", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "restarting the job (restart 1 of 2) after exit code 1" in proc.stderr
    assert "attempt 0: starting at step 0" in proc.stdout
    assert "attempt 1: starting at step 20" in proc.stdout  # the last checkpoint, not step 0
    assert "attempt 1: finished 40 steps" in proc.stdout
    assert "attempt 2" not in proc.stdout


def test_max_restarts_0_exits_with_the_failed_ranks_code(tmp_path) -> None:
    proc = _launch("-n", "2", "--max-restarts", "0", str(ROOT / "examples/resume.py"),
                   "--fail-at", "5", "--checkpoint", str(tmp_path / "c.npz"))
    assert proc.returncode == 1
    assert "rank 1 failed first: exit code 1" in proc.stderr
    assert "restarting" not in proc.stderr


def test_launch_trace_merges_the_ranks_timelines(tmp_path) -> None:
    script = tmp_path / "p.py"
    script.write_text("import numpy as np, ringcomm\nringcomm.init()\n"
                      "for _ in range(3): ringcomm.all_sum(np.ones(4))\n")
    proc = _launch("-n", "2", "--trace", str(tmp_path / "tl"), str(script))
    assert proc.returncode == 0, proc.stderr
    assert f"timeline of 2 rank(s), 8 events: {tmp_path / 'tl' / 'trace.json'}" in proc.stderr
    merged = json.loads((tmp_path / "tl" / "trace.json").read_text())
    spans = [e for e in merged["traceEvents"] if e["ph"] == "X"]
    assert [(e["pid"], e["name"]) for e in spans] == [(0, "all_sum")] * 3 + [(1, "all_sum")] * 3


def test_an_input_changed_while_its_call_is_in_flight_is_an_error_in_debug_mode() -> None:
    ranks = run_direct(2, "async_faults.py", "modified", timeout=60, RINGCOMM_DEBUG="1")
    for r in (0, 1):
        kind, _, message = _outcome(ranks[r], r)
        assert kind == "RingcommError", (r, message)
        assert "modified while the call was in flight (async_op=True)" in message, message


def test_a_mismatched_async_call_raises_mismatch_from_its_work_on_every_rank() -> None:
    ranks = run_direct(2, "async_faults.py", "mismatch", timeout=60)
    for r in (0, 1):
        kind, seconds, message = _outcome(ranks[r], r)
        assert kind == "MismatchError" and seconds < 5, (r, kind, seconds, message)
        assert "all_sum" in message and "all_max" in message, message


def test_a_call_never_waited_on_still_happens_when_the_program_ends() -> None:
    ranks = run_direct(2, "async_faults.py", "exit_in_flight", timeout=60)
    assert [job.returncode for job in ranks] == [0, 0]
    kind, _, message = _outcome(ranks[1], 1)
    assert kind == "ok" and message == "[3. 3.]", (kind, message)


def test_a_rank_that_exits_with_a_call_in_flight_fails_its_peers_work_and_hangs_nothing() -> None:
    ranks = run_direct(2, "async_faults.py", "peer_gone", timeout=60, RINGCOMM_TIMEOUT="30")
    kind, seconds, message = _outcome(ranks[1], 1)
    assert kind in ("PeerError", "PeerAbortedError") and "rank 0" in message, (kind, message)
    assert seconds < 5, (seconds, message)


def test_a_call_in_flight_in_another_group_is_not_taken_for_a_deadlock() -> None:
    ranks = run_direct(2, "async_faults.py", "concurrent_groups", timeout=60, RINGCOMM_TIMEOUT="20")
    for r in (0, 1):
        kind, seconds, message = _outcome(ranks[r], r)
        assert kind == "ok" and message == "[2.]", (r, kind, message)
        assert 1.4 < seconds < 5, (r, seconds)


@pytest.mark.parametrize("transport", ["auto", "tcp"])
@pytest.mark.parametrize("case", ["scatter_roots", "a2a_shapes", "object_vs_array"])
def test_new_collectives_that_disagree_raise_mismatch_on_every_rank(case: str,
                                                                    transport: str) -> None:
    ranks = run_direct(2, "async_faults.py", case, timeout=60, RINGCOMM_TRANSPORT=transport)
    for r in (0, 1):
        kind, seconds, message = _outcome(ranks[r], r)
        assert kind == "MismatchError" and seconds < 5, (case, r, kind, seconds, message)
