"""The conformance suite on every backend at sizes 1-4: every public op, dtype and shape class.

The assertions live in tests/ranks/conformance.py and run inside every rank, the same for every
backend: the ring through ``ringcomm launch``, MPI through OpenMPI's ``mpirun`` and through
``ringcomm launch --backend mpi``. Each rank reports how many cases it passed, which must be
exactly the number the suite's tables call for.
"""

from __future__ import annotations

import pathlib
import random
import re
import socket
import sys

import pytest

from ringcomm import native
from tests import harness
from tests.ranks import conformance as suite

# Every dtype the suite must cover: a dtype dropped from its table fails here, not silently.
DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128", "bfloat16"]
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def assert_suite_passed(job: harness.Job, n: int, backend: str, mode: str = "conformance",
                        case: str | None = None) -> None:
    """Assert the job exited 0 and every rank passed exactly the cases the suite calls for."""
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    report = re.compile(r"rank (\d+)/(\d+): (\d+) cases passed \((\w+), backend (\w+)\)$")
    counts = {}
    for line in job.lines("rank "):
        m = report.match(line)
        assert m, line
        assert (int(m[2]), m[4], m[5]) == (n, mode, backend), line
        counts[int(m[1])] = int(m[3])
    assert sorted(counts) == list(range(n)), job.stdout
    want = {r: suite.expected_cases(mode, r, n, case) for r in range(n)}
    assert counts == want, f"cases passed per rank {counts}, the tables call for {want}"


def mpi_launcher(n: int) -> list[str]:
    if reason := harness.mpi_missing():
        pytest.skip(reason)
    mpirun = harness.mpirun()
    assert mpirun is not None
    return [mpirun, "--oversubscribe", "--bind-to", "none", "-n", str(n)]


def test_the_suite_covers_every_dtype_and_counts_every_op_at_every_size() -> None:
    assert [str(d) for d in suite.DTYPES] == DTYPES
    assert {str(d) for d in suite.BIG_DTYPES} == {"bool", "int8", "float16", "float32",
                                                   "complex128", "bfloat16"}
    # Per dtype and shape: all_sum, all_max, all_min, input untouched, all_gather, sum_scatter,
    # and a broadcast from each of the n roots; sum_scatter of the input itself when it divides;
    # all_to_all, and a gather and a scatter from each root.
    for n in (1, 2, 3, 4):
        per_shape = 6 + n + 1 + 2 * n
        shapes = len(DTYPES) * len(suite.SHAPES) + len(suite.BIG_DTYPES)
        dividing = sum(1 for dt in suite.DTYPES for s, _ in suite.shapes_for(dt, "conformance")
                       if s and s[0] % n == 0)
        objects = 1 + n + (n > 1)  # all_gather_object, broadcast_object per root, send/recv_object
        group = shapes * per_shape + dividing + len(DTYPES) * 4 * (n - 1) + 3 + (n > 1) + objects
        assert suite.expected_cases("conformance", 0, n) == 2 * group + 2 + 9 + (n > 1)


# What every rank of the conformance suite prints on the ring (r, n and want filled in).
SUITE_LINE = "rank {{r}}/{{n}}: {want} cases passed (conformance, backend ring)"


def paths_taken(trace_dir: pathlib.Path, n: int, p2p: bool = False) -> set[str]:
    """Return the paths (shm-slot, tcp-pipeline, ...) the ranks' collectives took, from their
    traces; with `p2p`, those their sends and receives took."""
    from ringcomm import trace

    return {e["args"]["path"] for r in range(n)
            for e in trace.read_events(trace_dir / f"rank{r}.json")
            if e.get("ph") == "X" and (e["name"] in ("send", "recv")) == p2p}


def cores_taken(trace_dir: pathlib.Path, n: int, path: str = "shm-slot",
                most: int | None = None, group: str | None = None) -> set[str]:
    """Return which cores (native, python) ran the ranks' small reductions on `path` (of at
    most `most` bytes, and in `group`, where given)."""
    from ringcomm import trace

    return {e["args"]["core"] for r in range(n)
            for e in trace.read_events(trace_dir / f"rank{r}.json")
            if e.get("ph") == "X" and e["args"].get("path") == path
            and e["name"] in ("all_sum", "all_max", "all_min")
            and (most is None or 0 < e["args"]["bytes"] <= most)
            and (group is None or e["args"]["group"] == group)}


def native_missing() -> str | None:
    try:
        from ringcomm import _native  # type: ignore[attr-defined]  # noqa: F401
    except ImportError as e:
        return f"the compiled core is not built here ({e}): no C compiler at install time?"
    return None


@pytest.mark.parametrize("n,core", [(1, "native"), (2, "native"), (3, "native"), (4, "native"),
                                    (2, "python"), (4, "python")])
@pytest.mark.timeout(240)
def test_the_ring_passes_the_suite_through_ringcomm_launch(n: int, core: str, tmp_path) -> None:
    # The suite on both paths: the compiled core, and pure Python (RINGCOMM_NATIVE=0).
    if core == "native" and (reason := native_missing()):
        pytest.skip(reason)
    job = harness.run_ranks(n, "conformance.py", "ring", timeout=200, RINGCOMM_TRACE=str(tmp_path),
                            RINGCOMM_NATIVE="1" if core == "native" else "0")
    assert_suite_passed(job, n, "ring")
    if n > 1:
        # The ranks of one host talk through shared memory: every collective takes a shared
        # path. ("self": a split group of one rank.)
        assert paths_taken(tmp_path, n) - {"self"} == {"shm-slot", "shm-chunked"}
        assert paths_taken(tmp_path, n, p2p=True) == {"shm-p2p"}
        # The trace says which core ran the small reductions, and it is the one asked for.
        assert cores_taken(tmp_path, n) == {core}


@pytest.mark.parametrize("core", ["native", "python"])
@pytest.mark.timeout(120)
def test_send_and_recv_on_one_host_take_every_path_in_order(core: str) -> None:
    # Small messages through the core's channel call; a full channel, a late message, a
    # header that differs and a large message through the Python link; numbered as one.
    if core == "native" and (reason := native_missing()):
        pytest.skip(reason)
    job = harness.run_ranks(2, "p2p_paths.py", timeout=100,
                            RINGCOMM_NATIVE="1" if core == "native" else "0")
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    assert sorted(job.lines("ok p2p")) == [f"ok p2p rank {r} ({core})" for r in range(2)]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.timeout(240)
def test_the_tcp_ring_passes_the_suite_when_forced(n: int, tmp_path) -> None:
    job = harness.run_ranks(n, "conformance.py", "ring", timeout=200, RINGCOMM_TRACE=str(tmp_path),
                            RINGCOMM_TRANSPORT="tcp")
    assert_suite_passed(job, n, "ring")
    assert paths_taken(tmp_path, n) - {"self"} == {"tcp-latency", "tcp-pipeline", "tcp-relay",
                                                   "tcp-pairs"}
    assert paths_taken(tmp_path, n, p2p=True) == {"tcp-p2p"}
    # Two ranks over sockets: the core's exchange sends, receives, checks and reduces messages
    # up to 64 KiB; larger ones on the latency path, and the ring of three, take Python's loop.
    want = {"native"} if n == 2 and native.PATH == "native" else {"python"}
    assert cores_taken(tmp_path, n, "tcp-latency", most=64 << 10, group="world") == want


def _second_loopback_missing() -> str | None:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
    except OSError as e:
        return f"127.0.0.2 is not an address of this machine ({e}); Linux has all of 127/8"
    return None


def run_on_hosts(hosts: list[int], name: str, *args: str, line: str, **env: str) -> None:
    """Run tests/ranks/NAME on loopback hosts of hosts[i] ranks each (127.0.0.1, 127.0.0.2, ...)
    and assert that every rank exited 0 printing `line` (formatted with r and n)."""
    ips = [f"127.0.0.{h + 1}" for h, k in enumerate(hosts) for _ in range(k)]
    n = len(ips)
    ranks = harness.run_direct(n, name, *args, timeout=260, ips=ips, **env)
    for r, job in enumerate(ranks):
        assert job.returncode == 0, f"{args}, rank {r}: exit {job.returncode}\n" \
                                    f"{job.stderr[-3000:]}"
        assert job.lines("rank ") == [line.format(r=r, n=n)], job.stdout


@pytest.mark.skipif(_second_loopback_missing() is not None,
                    reason=str(_second_loopback_missing()))
@pytest.mark.timeout(300)
def test_a_ring_over_hosts_of_different_sizes_links_neighbours_on_one_host(tmp_path) -> None:
    # Three ranks on one host and one on another, told apart by their loopback addresses:
    # the flat ring joins neighbours on one host through shared-memory links and the
    # others through sockets; send/recv take shared memory inside the host.
    n = 4
    run_on_hosts([3, 1], "conformance.py", "ring", line=SUITE_LINE.format(
        want=suite.expected_cases("conformance", 0, n)), RINGCOMM_TRACE=str(tmp_path))
    paths = paths_taken(tmp_path, n)
    # Every algorithm of the ring ran on ranks with a link of each kind (mixed) and on ranks
    # whose two neighbours share their host (shm); a split of host one's ranks alone uses
    # shared memory as memory.
    assert {"mixed-latency", "mixed-pipeline", "mixed-relay", "mixed-pairs"} <= paths, paths
    assert {"shm-latency", "shm-pipeline", "shm-relay", "shm-slot"} <= paths, paths
    assert paths_taken(tmp_path, n, p2p=True) == {"shm-p2p", "tcp-p2p"}


@pytest.mark.skipif(_second_loopback_missing() is not None,
                    reason=str(_second_loopback_missing()))
@pytest.mark.timeout(300)
def test_two_hosts_of_two_ranks_on_one_machine_pass_the_suite_hierarchically(tmp_path) -> None:
    # all_sum reduces in shared memory, then across the hosts on one ring per local rank; the
    # other collectives take the flat ring, whose neighbours on one host share a link.
    n = 4
    run_on_hosts([2, 2], "conformance.py", "ring", line=SUITE_LINE.format(
        want=suite.expected_cases("conformance", 0, n)), RINGCOMM_TRACE=str(tmp_path))
    paths = paths_taken(tmp_path, n)
    assert {"shm+tcp-hierarchical", "mixed-latency", "mixed-pipeline", "mixed-relay",
            "mixed-pairs"} <= paths, paths
    assert paths_taken(tmp_path, n, p2p=True) == {"shm-p2p", "tcp-p2p"}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_mpi_passes_the_suite_through_mpirun(n: int) -> None:
    job = harness.run_ranks(n, "conformance.py", "mpi", launcher=mpi_launcher(n), timeout=200,
                            **ROOT_ENV)
    assert_suite_passed(job, n, "mpi")


@pytest.mark.timeout(240)
def test_the_ring_with_two_connections_per_ip_passes_the_suite() -> None:
    launcher = harness.launch_argv("-n", "3", "--connections-per-ip", "2")
    job = harness.run_ranks(3, "conformance.py", "ring", launcher=launcher, timeout=200)
    assert_suite_passed(job, 3, "ring")


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_mpi_through_ringcomm_launch_with_more_ranks_than_cores() -> None:
    mpi_launcher(3)  # skips without MPI
    launcher = harness.launch_argv("--backend", "mpi", "-n", "3")
    job = harness.run_ranks(3, "conformance.py", "mpi", launcher=launcher, timeout=200)
    assert_suite_passed(job, 3, "mpi")


def test_an_unknown_mode_is_refused() -> None:
    job = harness.run([sys.executable, harness.script("conformance.py"), "any", "nope"],
                      timeout=60)
    assert job.returncode == 1 and "unknown mode 'nope'" in job.stderr, job.stderr


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.timeout(240)
def test_many_collectives_of_random_sizes_agree_bit_for_bit(n: int, tmp_path) -> None:
    # The shared-memory flags' stress test: at 4 ranks on 2 cores the ranks are preempted at
    # every point between writing data and posting it.
    seed = random.randrange(1 << 30)
    job = harness.run_ranks(n, "stress.py", str(seed), "1500", timeout=200,
                            RINGCOMM_TRACE=str(tmp_path))
    assert job.returncode == 0, f"seed {seed}: exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    assert sorted(job.lines("rank ")) == [f"rank {r}: 1500 calls ok" for r in range(n)], job.stdout
    assert paths_taken(tmp_path, n) - {"self"} == {"shm-slot", "shm-chunked"}


@pytest.mark.skipif(_second_loopback_missing() is not None,
                    reason=str(_second_loopback_missing()))
@pytest.mark.timeout(240)
def test_random_collectives_over_both_kinds_of_links_agree_bit_for_bit(tmp_path) -> None:
    # 3 + 1 ranks: the ring's shared-memory links carry every size, and wrap their channels.
    seed = random.randrange(1 << 30)
    run_on_hosts([3, 1], "stress.py", str(seed), "1500", line="rank {r}: 1500 calls ok",
                 RINGCOMM_TRACE=str(tmp_path))
    assert {"mixed-latency", "mixed-pipeline"} <= paths_taken(tmp_path, 4)


def assert_async_passed(job: harness.Job, n: int, backend: str) -> None:
    from tests.ranks import async_calls

    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    want = [f"rank {r}/{n}: {async_calls.expected(n, backend)} async cases passed (backend {backend})"
            for r in range(n)]
    assert sorted(job.lines("rank ")) == want, job.stdout


@pytest.mark.parametrize(("n", "transport"), [(1, "auto"), (2, "auto"), (4, "auto"), (3, "tcp")])
@pytest.mark.timeout(240)
def test_the_async_variant_of_every_op_with_calls_in_flight_on_the_ring(n: int,
                                                                       transport: str) -> None:
    job = harness.run_ranks(n, "async_calls.py", "ring", timeout=200, RINGCOMM_TRANSPORT=transport)
    assert_async_passed(job, n, "ring")


@pytest.mark.skipif(_second_loopback_missing() is not None,
                    reason=str(_second_loopback_missing()))
@pytest.mark.parametrize("hosts", [[3, 1], [2, 2]])
@pytest.mark.timeout(240)
def test_the_async_variant_of_every_op_on_hosts_of_several_ranks(hosts: list[int]) -> None:
    # 3 + 1: a ring of shared-memory and TCP links; 2 + 2: hierarchical.
    from tests.ranks import async_calls

    n = sum(hosts)
    run_on_hosts(hosts, "async_calls.py", "ring", line="rank {r}/{n}: "
                 f"{async_calls.expected(n)} async cases passed (backend ring)")


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_the_async_variant_of_every_op_with_calls_in_flight_on_mpi() -> None:
    job = harness.run_ranks(3, "async_calls.py", "mpi", launcher=mpi_launcher(3), timeout=200,
                            **ROOT_ENV)
    assert_async_passed(job, 3, "mpi")
