"""The job harness itself: its marker reaches every process of a job under every launcher, so
"nothing survives" is proven, and a job past its timeout is ended and reported."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests import harness

# Each rank writes its pid and its child's pid to DIR/pid<rank>, then both sleep.
SLEEPER = """
import os, subprocess, sys, time
rank = next(os.environ[v] for v in ("RINGCOMM_RANK", "OMPI_COMM_WORLD_RANK") if v in os.environ)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
path = os.path.join(sys.argv[1], "pid" + rank)
with open(path + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.replace(path + ".tmp", path)
time.sleep(60)
"""


def _launcher(kind: str) -> list[str]:
    if kind == "ringcomm launch":
        return harness.launch_argv("-n", "2")
    if reason := harness.mpi_missing():
        pytest.skip(reason)
    mpirun = harness.mpirun()
    assert mpirun is not None
    return [mpirun, "--oversubscribe", "--bind-to", "none", "-n", "2"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["ringcomm launch", "mpirun"])
def test_the_marker_reaches_every_rank_and_its_children(tmp_path: Path, kind: str) -> None:
    argv = [*_launcher(kind), sys.executable, "-c", SLEEPER, str(tmp_path)]
    environ = harness.env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    with harness.Started(argv, environ=environ) as job:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("pid?"))) < 2:
            assert job.proc.poll() is None, job.proc.communicate()
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.05)
        pids = [int(p) for f in sorted(tmp_path.glob("pid?")) for p in f.read_text().split()]
        found = harness.survivors(job.marker)
        assert set(pids) <= set(found), (pids, found)
        assert job.proc.pid in found
        job.end()
        harness.assert_none_survive(job.marker, what=kind)


@pytest.mark.timeout(60)
def test_a_job_past_its_timeout_is_ended_and_fails_with_its_output() -> None:
    code = "import subprocess, sys, time; print('started', flush=True); " \
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"ran past 2 s\nstdout:\nstarted") as failure:
        harness.run([sys.executable, "-c", code], timeout=2)
    assert time.monotonic() - started < 15
    assert "ran past" in str(failure.value)


@pytest.mark.timeout(60)
def test_a_process_that_outlives_its_job_is_named_and_killed() -> None:
    code = "import subprocess, sys; " \
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], " \
           "start_new_session=True)"
    with pytest.raises(AssertionError, match=r"processes outlived .* by more than 1 s: \d+ \(") \
            as failure:
        harness.run([sys.executable, "-c", code], timeout=30, grace=1)
    pid = int(str(failure.value).split("by more than 1 s: ", 1)[1].split()[0])
    deadline = time.monotonic() + 5
    while harness.alive(pid):
        assert time.monotonic() < deadline, f"survivor {pid} was not killed"
        time.sleep(0.05)
