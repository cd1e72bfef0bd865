"""ringcomm as a torch.distributed backend: every op's semantics, the ways a job starts,
failures as DistBackendError, DDP and FSDP2 against gloo.

One spawned job per rank count checks many cases inside (tests/ranks/torch_backend.py and
tests/ranks/torch_backend_training.py).
"""

from __future__ import annotations

import sys

from tests.harness import (
    env,
    free_port_pair,
    run,
    run_case,
    run_direct,
    run_ranks,
    run_together,
    script,
)


def _ok(jobs, case: str, n: int) -> None:
    for rank, job in enumerate(jobs):
        assert job.returncode == 0, f"rank {rank}: exit {job.returncode}\n{job.stdout}\n" \
            f"{job.stderr[-3000:]}"
        assert f"ok {case} rank {rank}" in job.stdout, job.stdout


def test_every_op_matches_a_one_process_reference_on_2_and_4_ranks() -> None:
    for n in (2, 4):
        run_case(n, "torch_backend.py", "semantics", timeout=240)


def test_every_op_matches_under_torchrun_on_3_ranks(tmp_path) -> None:
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
            "--master-port", str(free_port_pair()), script("torch_backend.py"), "semantics"]
    job = run(argv, timeout=240, environ=env(TMPDIR=str(tmp_path)))
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
    for rank in range(3):  # torchrun passes output through unbuffered: lines may run together
        assert f"ok semantics rank {rank}" in job.stdout, job.stdout


def test_hand_set_torch_variables_tcp_and_file_init_methods_start_the_backend(tmp_path) -> None:
    port = free_port_pair()
    hand = [([sys.executable, script("torch_backend.py"), "hello"],
             env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), WORLD_SIZE="2"))
            for r in range(2)]
    _ok(run_together(hand, timeout=60), "hello", 2)
    tcp = f"tcp://127.0.0.1:{free_port_pair()}"
    by_url = [([sys.executable, script("torch_backend.py"), "hello", url, str(r), "3"], env())
              for url in (tcp, f"file://{tmp_path}/store") for r in range(3)]
    jobs = run_together(by_url, timeout=90)
    _ok(jobs[:3], "hello", 3)
    _ok(jobs[3:], "hello", 3)


def test_a_mismatched_call_raises_dist_backend_error_on_every_rank() -> None:
    _ok(run_direct(2, "torch_backend.py", "mismatch", timeout=60), "mismatch", 2)


def test_a_killed_rank_is_a_dist_backend_error_on_the_others_within_the_timeout() -> None:
    jobs = run_direct(3, "torch_backend.py", "killed", timeout=60)
    assert jobs[2].returncode == 17
    _ok(jobs[:2], "killed", 2)
    for job in jobs[:2]:
        assert "rank 2" in job.stdout and "exited during the call" in job.stdout, job.stdout


def test_ddp_on_2_and_4_ranks_and_fsdp2_on_2_train_as_on_gloo() -> None:
    for n, more in ((2, ("fsdp",)), (4, ())):
        job = run_ranks(n, "torch_backend_training.py", "train", *more, timeout=150)
        assert job.returncode == 0, f"exit {job.returncode}\n{job.stdout}\n{job.stderr[-3000:]}"
        for rank in range(n):
            assert f"ok train rank {rank}" in job.stdout, job.stdout
