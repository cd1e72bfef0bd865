"""The ring under other engines: torchrun's variables and a rendezvous at rank 0.

torchrun itself runs the conformance suite on 3 local ranks; hand-set
torch-style variables show the rendezvous's errors (a missing rank named, a
duplicate rank, a size mismatch, an unreachable rank 0), each within its
deadline; the Slurm node-list syntax and the order in which init() reads the
engines are checked as pure functions.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path

import pytest

from ringcomm import environment
from ringcomm import group as group_mod
from tests import harness
from tests.harness import env
from tests.ranks import conformance as suite


@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="torchrun is not installed (pip install torch)")
def test_torchrun_runs_the_conformance_suite_on_three_ranks(tmp_path) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
            "--master-port", str(harness.free_port_pair()), harness.script("conformance.py"), "ring"]
    # torchrun's own files go to tmp_path.
    proc = harness.run(argv, timeout=280,
                       environ=env(RINGCOMM_TOKEN="torchrun-test", TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # torchrun passes the ranks' output through unbuffered, so lines may run together.
    passed = re.findall(r"rank (\d)/3: (\d+) cases passed \(conformance, backend ring\)",
                        proc.stdout)
    assert sorted((int(r), int(n)) for r, n in passed) == [
        (r, suite.expected_cases("conformance", r, 3)) for r in range(3)], proc.stdout
    assert "RINGCOMM_TOKEN is not set" not in proc.stderr


def _ranks(ranks: list[int], size: int, port: int, timeout: str = "4",
           **extra: str) -> list[harness.Job]:
    """Start one process per entry of `ranks` with torch-style variables; return their results."""
    code = ("import ringcomm, numpy as np; w = ringcomm.init(); "
            "print('sum', ringcomm.all_sum(np.ones(2))[0], w.size(), w.backend)")
    return harness.run_together(
        [([sys.executable, "-c", code],
          env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(size),
              RINGCOMM_TIMEOUT=timeout, **extra)) for r in ranks], timeout=30)


@pytest.mark.timeout(60)
def test_hand_set_torch_variables_start_the_ring_with_rank_0s_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    results = _ranks([0, 1, 2], 3, harness.free_port_pair(), RINGCOMM_KEY_DIR=str(keys))
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split() == ["sum", "3.0", "3", "ring"], r.stdout
        assert "warn" not in r.stderr.lower(), r.stderr[-2000:]
    assert keys.is_dir() and list(keys.iterdir()) == []  # made for the job, gone after it


@pytest.mark.timeout(60)
def test_a_rank_that_never_arrives_is_named_within_the_deadline() -> None:
    t0 = time.monotonic()
    results = _ranks([0, 1], 3, harness.free_port_pair(), RINGCOMM_TOKEN="t")
    assert time.monotonic() - t0 < 4 + 3
    for r in results:
        assert r.returncode == 1
        assert "rank(s) 2 of 3 never arrived" in r.stderr, r.stderr[-1500:]
        assert "MASTER_PORT+1" in r.stderr and "RINGCOMM_RDZV_PORT" in r.stderr


@pytest.mark.timeout(60)
def test_a_duplicate_rank_and_a_size_mismatch_fail_every_rank() -> None:
    results = _ranks([0, 1, 1], 3, harness.free_port_pair(), RINGCOMM_TOKEN="t")
    assert all(r.returncode == 1 for r in results)
    assert "rank 1 reported twice" in results[0].stderr, results[0].stderr[-1500:]
    port = harness.free_port_pair()
    code = "import ringcomm; ringcomm.init()"
    jobs = harness.run_together(
        [([sys.executable, "-c", code],
          env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE=str(2 + r),
              RINGCOMM_TIMEOUT="4", RINGCOMM_TOKEN="t")) for r in (0, 1)], timeout=30)
    for job in jobs:
        assert "rank 1 reports a job of 3 ranks, rank 0 one of 2" in job.stderr, job.stderr[-1500:]


@pytest.mark.timeout(60)
def test_an_unreachable_rank_0_is_an_error_with_the_address_and_a_hint() -> None:
    port = harness.free_port_pair()
    t0 = time.monotonic()
    [result] = _ranks([1], 2, port, timeout="2", RINGCOMM_TOKEN="t")
    assert time.monotonic() - t0 < 2 + 3
    assert result.returncode == 1
    assert f"cannot connect to rank 0's torch rendezvous at 127.0.0.1:{port + 1}" in result.stderr
    assert "ECONNREFUSED" in result.stderr and "is rank 0 running" in result.stderr


@pytest.mark.parametrize("text, names", [
    ("node01", ["node01"]),
    ("a,b", ["a", "b"]),
    ("node[01-03,07],gpu-a[1-2]", ["node01", "node02", "node03", "node07", "gpu-a1", "gpu-a2"]),
    ("x[9-11]", ["x9", "x10", "x11"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
])
def test_slurm_node_lists_expand_in_full(text: str, names: list[str]) -> None:
    assert environment.expand_nodelist(text) == names


@pytest.mark.parametrize("text", ["node[1-", "node]1[", "node[3-1]", "node[a-b]", ""])
def test_malformed_slurm_node_lists_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="node list"):
        environment.expand_nodelist(text)


def test_a_slurm_step_meets_at_its_first_node_on_a_port_from_the_job_and_step() -> None:
    step = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NODELIST": "n[07-08]",
            "SLURM_JOB_ID": "1234", "SLURM_STEP_ID": "2", "SLURM_LOCALID": "1"}
    info = environment.rendezvous(step)
    assert info is not None
    assert (info.source, info.rank, info.size, info.host, info.local_rank) == \
        ("slurm", 3, 8, "n07", 1)
    assert info.port == environment.SLURM_PORT_BASE + (1234 * 31 + 2) % environment.SLURM_PORT_SPAN
    assert environment.rendezvous({**step, "RINGCOMM_RDZV_PORT": "4000"}).port == 4000
    # A batch script (no step) is no rendezvous: SLURM_STEP_NUM_TASKS is missing there.
    batch = {k: v for k, v in step.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert environment.rendezvous(batch) is None


@pytest.mark.parametrize("environ, chosen", [
    ({"MASTER_ADDR": "h", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "2"}, "ring"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "n1"}, "ring"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "n1",
      "PMI_SIZE": "2"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1", "RANK": "0",
      "WORLD_SIZE": "2"}, "mpi"),
    ({"RINGCOMM_RANK": "0", "RINGCOMM_HOSTFILE": "/x", "OMPI_COMM_WORLD_SIZE": "2"}, "ring"),
    ({"MASTER_ADDR": "h", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "1"}, "ring"),
    ({}, "single"),
])
def test_init_reads_the_engines_in_the_documented_order(environ: dict[str, str],
                                                        chosen: str) -> None:
    assert group_mod._choose("any", environ) == chosen


def test_malformed_torch_variables_are_init_errors() -> None:
    from ringcomm.errors import InitError

    with pytest.raises(InitError, match="WORLD_SIZE must be an integer, got 'four'"):
        group_mod._choose("any", {"MASTER_ADDR": "h", "MASTER_PORT": "1", "RANK": "0",
                                  "WORLD_SIZE": "four"})
    with pytest.raises(InitError, match="rank 5 is out of range for a job of 2 ranks"):
        group_mod._choose("any", {"MASTER_ADDR": "h", "MASTER_PORT": "1", "RANK": "5",
                                  "WORLD_SIZE": "2"})
