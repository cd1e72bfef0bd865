"""In-rank cases for the training and interop tests, and the helper that launches them.

Run inside ranks: ``ringcomm launch -n 2 tests/training_cases.py CASE``. Each
case asserts on every rank and ends with the line ``ok CASE rank R``.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()


# --- test side: start a job through the real launcher -------------------------


@functools.cache
def launcher_missing() -> str | None:
    """Return why `ringcomm launch` cannot run jobs here, or None when it can."""
    try:
        import ringcomm.backends.ring.backend  # noqa: F401
    except ImportError as e:
        return f"ring backend not available yet ({e})"
    try:
        r = subprocess.run([sys.executable, "-m", "ringcomm", "launch", "--help"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return "ringcomm launch --help did not answer within 60 s"
    if r.returncode != 0:
        return f"ringcomm launch is not available yet: {r.stderr.strip()[-200:]}"
    return None


def _marked(marker: str) -> list[int]:
    """Return the pids of live processes whose environment holds `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _kill_all(marker: str) -> list[int]:
    """SIGKILL every process of the job (found by `marker`) and return their pids."""
    pids = _marked(marker)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def launch(n: int, script: str | Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run `script` on `n` local ranks, bounded by `timeout`, and prove no process outlives it.

    Ranks run in sessions of their own, so the job is found by a marker in
    its environment, which the launcher passes down to every rank.
    """
    marker = f"RINGCOMM_TEST_JOB={uuid.uuid4().hex}"
    cmd = [sys.executable, "-m", "ringcomm", "launch", "-n", str(n), str(script), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RINGCOMM_TIMEOUT="60")
    env["RINGCOMM_TEST_JOB"] = marker.split("=", 1)[1]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # let the launcher stop its ranks first
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_all(marker)
            out, err = proc.communicate()
        _kill_all(marker)
        raise AssertionError(f"{cmd} ran past {timeout} s\nstdout:\n{out}\nstderr:\n{err}") from None
    deadline = time.monotonic() + 5  # ranks may still be exiting when the launcher returns
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _kill_all(marker)
    assert not left, f"processes {left} outlived {cmd}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch_case(n: int, case: str, timeout: float = 90) -> str:
    """Run one case of this file on `n` ranks, check every rank passed, and return stdout."""
    r = launch(n, HERE, case, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    for rank in range(n):
        assert f"ok {case} rank {rank}" in r.stdout, f"rank {rank} did not finish:\n{r.stdout}"
    return r.stdout


# --- rank side ----------------------------------------------------------------


def case_counts() -> None:
    """average_gradients: all_sum call counts and averaged values at the real group size."""
    import ringcomm
    import ringcomm.ops

    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    calls = []
    real = ringcomm.ops.all_sum

    def counting(x: Any, *, group: Any = None) -> Any:
        calls.append(np.asarray(x).nbytes)
        return real(x, group=group)

    ringcomm.ops.all_sum = counting
    try:
        grads = [np.full(10, rank + i, dtype=np.float32) for i in range(10)]
        mean_rank = (size - 1) / 2
        for limit, expected in ((32 * 2**20, 1), (200, 2), (0, 10), (-1, 10)):
            calls.clear()
            out = ringcomm.average_gradients(grads, all_reduce_size=limit)
            assert len(calls) == (expected if size > 1 else 0), (limit, calls)
            for i, g in enumerate(out):
                assert g.dtype == np.float32 and g.shape == (10,)
                np.testing.assert_allclose(g, mean_rank + i)
        calls.clear()
        mixed = {"a": np.ones(3, np.float64) * rank, "b": np.ones(4, np.float32) * rank,
                 "c": np.ones(5, np.float64) * rank, "none": None}
        out = ringcomm.average_gradients(mixed)
        assert len(calls) == (2 if size > 1 else 0), calls  # one bucket per dtype
        assert out["none"] is None and out["b"].dtype == np.float32
        np.testing.assert_allclose(out["c"], np.full(5, mean_rank))
    finally:
        ringcomm.ops.all_sum = real
    print(f"ok counts rank {rank}", flush=True)


def _libraries() -> list[tuple[str, Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]]:
    """Return (name, from NumPy, to NumPy) for every array library that is installed."""
    libs: list[tuple[str, Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]] = []
    try:
        import torch

        libs.append(("torch", torch.from_numpy, lambda t: t.float().numpy()))
        libs.append(("torch-grad", lambda a: torch.from_numpy(a).requires_grad_() * 1,
                     lambda t: t.detach().float().numpy()))
        libs.append(("torch-bf16", lambda a: torch.from_numpy(a).bfloat16(),
                     lambda t: t.float().numpy()))
    except ImportError:
        pass
    try:
        import mlx.core as mx

        libs.append(("mlx", mx.array, lambda x: np.array(x.astype(mx.float32))))
        libs.append(("mlx-bf16", lambda a: mx.array(a).astype(mx.bfloat16),
                     lambda x: np.array(x.astype(mx.float32))))
    except ImportError:
        pass
    try:
        import jax.numpy as jnp

        libs.append(("jax", jnp.asarray, lambda x: np.asarray(x, dtype=np.float32)))
        libs.append(("jax-bf16", lambda a: jnp.asarray(a, dtype=jnp.bfloat16),
                     lambda x: np.asarray(x, dtype=np.float32)))
    except ImportError:
        pass
    return libs


def _check(name: str, x: Any, back: Callable[[Any], np.ndarray], op: str, got: Any,
           want: np.ndarray) -> None:
    assert type(got) is type(x), f"{name} {op}: got {type(got)}"
    assert got.dtype == x.dtype, f"{name} {op}: dtype {got.dtype} != {x.dtype}"
    np.testing.assert_allclose(back(got), want, err_msg=f"{name} {op}")


def case_interop() -> None:
    """Every collective on every installed array library returns that library's type and the right values."""
    import ringcomm

    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    base = np.arange(2 * size * 3, dtype=np.float32).reshape(2 * size, 3)
    mine = base + rank
    for name, make, back in _libraries():
        x = make(mine.copy())
        check = functools.partial(_check, name, x, back)

        ranks = np.arange(size)
        total = size * base + ranks.sum()
        check("all_sum", ringcomm.all_sum(x), total)
        check("all_max", ringcomm.all_max(x), base + size - 1)
        check("all_min", ringcomm.all_min(x), base)
        check("all_gather", ringcomm.all_gather(x), np.concatenate([base + r for r in ranks]))
        rows = total.shape[0] // size
        check("sum_scatter", ringcomm.sum_scatter(x), total[rank * rows:(rank + 1) * rows])
        check("broadcast", ringcomm.broadcast(x, size - 1), base + size - 1)
        if size > 1:  # a ring: send to the right, receive from the left
            right, left = (rank + 1) % size, (rank - 1) % size
            if rank % 2 == 0:
                ringcomm.send(x, right)
                got = ringcomm.recv_like(x, left)
            else:
                got = ringcomm.recv_like(x, left)
                ringcomm.send(x, right)
            check("send/recv_like", got, base + left)
        grads = {"w": make(mine.copy()), "b": [make(mine[0].copy())]}
        avg = ringcomm.average_gradients(grads)
        check("average_gradients", avg["w"], base + ranks.mean())
        assert type(avg["b"][0]) is type(x)
    print(f"ok interop rank {rank}", flush=True)


if __name__ == "__main__":
    {"counts": case_counts, "interop": case_interop}[sys.argv[1]]()
