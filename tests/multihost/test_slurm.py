"""ringcomm's ring backend in real Slurm job steps: srun and sbatch on the namespace hosts.

A module fixture builds three namespace hosts and a real Slurm cluster on them
(slurmctld, one slurmd per host, munge; see ``slurm.py``). The rank programs
find their job from the step's variables alone: no hostfile, no launcher.
Everything skips when Slurm or munge is not installed (``.ci/setup-slurm``).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import harness
from tests.multihost import netns, slurm
from tests.test_conformance import assert_suite_passed

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / "tests" / "ranks" / "conformance.py"
STEP_TIMEOUT = 90.0

PROGRAM = '''\
import json, os, signal, socket, sys

import numpy as np

import ringcomm

world = ringcomm.init(strict=True)
assert world.backend == "ring", world.backend
rank, size = world.rank(), world.size()
total = ringcomm.all_sum(np.full(4, rank + 1.0))
assert total.tolist() == [size * (size + 1) / 2] * 4, total
name = np.zeros(64, np.uint8)
name[:len(socket.gethostname())] = np.frombuffer(socket.gethostname().encode(), np.uint8)
hosts = [bytes(row).rstrip(b"\\0").decode()
         for row in ringcomm.all_gather(name).reshape(size, -1)]
if sys.argv[1:] == ["kill"]:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    ringcomm.all_sum(np.ones(1 << 20))
    raise SystemExit(f"rank {rank}: all_sum returned with rank 1 killed")
print("ok " + json.dumps({"rank": rank, "size": size, "sum": total[0], "hosts": hosts,
                          "nodelist": os.environ["SLURM_STEP_NODELIST"]}), flush=True)
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm.SlurmCluster]:
    """Build three namespace hosts and start a Slurm cluster on them."""
    reason = slurm.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    hosts = netns.build(tmp_path_factory.mktemp("slurm-hosts"), count=3)
    try:
        built = slurm.start(hosts)
        try:
            yield built
        finally:
            left = slurm.stop(built)
            assert not left, f"the Slurm test cluster left: {left}"
    finally:
        left = netns.teardown(hosts)
        assert not left, f"test hosts not fully removed: {left}"


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slurm-program") / "prog.py"
    path.write_text(PROGRAM)
    return path


def _env(cluster: slurm.SlurmCluster) -> dict[str, str]:
    env = cluster.env()
    env["PYTHONPATH"] = str(REPO)
    env["RINGCOMM_TOKEN"] = secrets.token_hex(16)
    env["RINGCOMM_TIMEOUT"] = "30"
    for name in ("RINGCOMM_RANK", "RINGCOMM_HOSTFILE", "MLX_RANK", "MLX_HOSTFILE",
                 "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "RINGCOMM_RDZV_PORT"):
        env.pop(name, None)
    return env


def _reports(out: str) -> list[dict]:
    found = [json.loads(line[3:]) for line in out.splitlines() if line.startswith("ok ")]
    return sorted(found, key=lambda r: r["rank"])


def _clean(cluster: slurm.SlurmCluster) -> None:
    """Assert no job process is left on any node and every node is idle again."""
    assert cluster.wait_no_job_processes() == {}
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and (cluster.jobs() or set(cluster.states().values())
                                           != {"idle"}):
        time.sleep(0.2)
    assert cluster.jobs() == []
    assert cluster.states() == dict.fromkeys(cluster.node_names, "idle")


def test_srun_three_nodes(cluster: slurm.SlurmCluster, program: Path) -> None:
    r = cluster.srun(["-N", "3", "-n", "3", sys.executable, str(program)],
                     timeout=STEP_TIMEOUT, env=_env(cluster))
    assert r.returncode == 0, r.stderr
    reports = _reports(r.stdout)
    assert [x["rank"] for x in reports] == [0, 1, 2]
    assert all(x["size"] == 3 and x["sum"] == 6 for x in reports)
    # One rank per node, each on a host with its own name, so the ranks talk over TCP.
    assert reports[0]["hosts"] == cluster.node_names
    assert reports[0]["nodelist"] == "rcnode[1-3]"
    _clean(cluster)


def test_srun_two_tasks_per_node(cluster: slurm.SlurmCluster, program: Path) -> None:
    r = cluster.srun(["-N", "3", "-n", "6", sys.executable, str(program)],
                     timeout=STEP_TIMEOUT, env=_env(cluster))
    assert r.returncode == 0, r.stderr
    reports = _reports(r.stdout)
    assert [x["rank"] for x in reports] == list(range(6))
    assert all(x["size"] == 6 and x["sum"] == 21 for x in reports)
    # Slurm's default block distribution: ranks 0-1 on the first node, and so on.
    assert reports[0]["hosts"] == [n for n in cluster.node_names for _ in range(2)]
    _clean(cluster)


def test_srun_conformance(cluster: slurm.SlurmCluster) -> None:
    argv = ["-N", "3", "-n", "3", sys.executable, str(CONFORMANCE), "ring"]
    start = time.monotonic()
    r = cluster.srun(argv, timeout=240.0, env=_env(cluster))
    # Every rank passed exactly the cases the suite's tables call for at 3 ranks on the ring.
    assert_suite_passed(harness.Job(argv, r.returncode, r.stdout, r.stderr,
                                    time.monotonic() - start), 3, "ring")
    _clean(cluster)


def test_torch_backend_in_a_bare_srun_step(cluster: slurm.SlurmCluster) -> None:
    # srun alone, no torch variables: init_process_group("ringcomm") meets through ringcomm's
    # Slurm rendezvous and serves torch's env:// store; ops against a reference, and DDP.
    argv = ["-N", "2", "-n", "2", sys.executable, str(REPO / "tests" / "ranks" / "torch_hosts.py")]
    r = cluster.srun(argv, timeout=STEP_TIMEOUT, env=_env(cluster))
    assert r.returncode == 0, r.stderr[-4000:]
    lines = sorted(ln for ln in r.stdout.splitlines() if ln.startswith("ok hosts rank "))
    assert [ln.split()[3] for ln in lines] == ["0", "1"], r.stdout
    # One rank per node, on hosts of their own names, over TCP.
    assert {ln.split()[7] for ln in lines} == set(cluster.node_names[:2]), lines
    assert all(ln.split()[9].startswith("tcp") for ln in lines), lines
    _clean(cluster)


def test_killed_task_ends_the_step(cluster: slurm.SlurmCluster, program: Path,
                                   tmp_path: Path) -> None:
    # Each task's stderr goes to its own file: when a task dies of a signal, srun aborts the
    # step and may drop the tail of the output it forwards, the survivors' last lines with it.
    err = tmp_path / "task-%t.err"
    start = time.monotonic()
    r = cluster.srun(["-N", "3", "-n", "3", f"--error={err}", sys.executable, str(program),
                      "kill"], timeout=STEP_TIMEOUT, env=_env(cluster))
    # srun reports the signal as 128 + 9, and how every task ended.
    assert r.returncode == 137, r.stderr
    assert "rcnode2: task 1: Killed" in r.stderr
    for task in (0, 2):
        assert f"task {task}: Exited with exit code 1" in r.stderr, r.stderr
    # The survivors fail on their own, naming the killed rank and its address, long
    # before their 30 s deadline.
    for task in (0, 2):
        text = (tmp_path / f"task-{task}.err").read_text()
        assert "rank 1 (10.77." in text.splitlines()[-1], text
    assert time.monotonic() - start < 20, "the survivors waited for their deadline"
    _clean(cluster)


def test_sbatch_script_runs_srun(cluster: slurm.SlurmCluster, program: Path,
                                 tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\nsrun {sys.executable} {program}\n")
    output = tmp_path / "job.out"
    r = cluster.sbatch(["-N", "3", "-n", "3", f"--output={output}", str(script)],
                       timeout=STEP_TIMEOUT, env=_env(cluster))
    assert r.returncode == 0, f"{r.stderr}\n{output.read_text() if output.exists() else ''}"
    reports = _reports(output.read_text())
    assert [x["rank"] for x in reports] == [0, 1, 2]
    assert all(x["size"] == 3 and x["sum"] == 6 for x in reports)
    assert reports[0]["hosts"] == cluster.node_names
    _clean(cluster)


def test_sbatch_runs_ringcomm_launch_which_starts_the_ranks_with_srun(
        cluster: slurm.SlurmCluster, program: Path, tmp_path: Path) -> None:
    script = tmp_path / "launch.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} -m ringcomm launch -n 3 {program}\n")
    output = tmp_path / "launch.out"
    r = cluster.sbatch(["-N", "3", "-n", "3", f"--output={output}", str(script)],
                       timeout=STEP_TIMEOUT, env=_env(cluster))
    text = output.read_text() if output.exists() else ""
    assert r.returncode == 0, f"{r.stderr}\n{text}"
    reports = _reports(text)
    assert [x["rank"] for x in reports] == [0, 1, 2], text
    assert all(x["size"] == 3 and x["sum"] == 6 for x in reports), text
    assert reports[0]["hosts"] == cluster.node_names  # one rank per node: srun placed them
    _clean(cluster)


def test_a_failing_rank_under_launch_with_srun_ends_with_its_code(
        cluster: slurm.SlurmCluster, tmp_path: Path) -> None:
    prog = tmp_path / "fail.py"
    prog.write_text("import sys, ringcomm\nw = ringcomm.init()\nringcomm.barrier()\n"
                    "sys.exit(7 if w.rank() == 1 else 0)\n")
    script = tmp_path / "fail.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} -m ringcomm launch -n 3 {prog}\n"
                      "echo launch-exit=$?\n")
    output = tmp_path / "fail.out"
    cluster.sbatch(["-N", "3", "-n", "3", f"--output={output}", str(script)],
                   timeout=STEP_TIMEOUT, env=_env(cluster))
    text = output.read_text()
    assert "launch-exit=7" in text, text
    _clean(cluster)


def test_stop_ends_a_running_job(tmp_path: Path) -> None:
    """stop() cancels a running job and leaves no daemon and no job process behind."""
    reason = slurm.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    hosts = netns.build(tmp_path / "hosts", count=2)
    try:
        built = slurm.start(hosts)
        try:
            r = built.command(["sbatch", "--parsable", "-N", "2", "-n", "2",
                               f"--output={tmp_path / 'job.out'}", "--wrap", "srun sleep 300"],
                              timeout=STEP_TIMEOUT)
            assert r.returncode == 0, r.stderr
            deadline = time.monotonic() + 30.0
            while len(built.job_pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert set(built.job_pids()) == set(built.node_names), built.job_pids()
            daemons = [p.pid for p in built.daemons.values()]
        finally:
            left = slurm.stop(built)
        assert left == []
        assert not [p for p in daemons if Path(f"/proc/{p}").exists()]
        assert {h.ip: hosts.stray_pids(h) for h in hosts.hosts} == {ip: [] for ip in hosts.ips}
        assert not built.workdir.exists()
    finally:
        assert netns.teardown(hosts) == []
