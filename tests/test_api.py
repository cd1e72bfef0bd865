"""The public API in one process: size-1 groups, argument errors, and backend choice."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import ringcomm
from ringcomm import group as group_mod
from ringcomm.errors import InitError
from tests.harness import env


def test_public_names_have_docstrings() -> None:
    for name in ringcomm.__all__:
        obj = getattr(ringcomm, name)
        if callable(obj):
            assert obj.__doc__, name


def test_init_without_launcher_is_size_1_and_idempotent() -> None:
    code = ("import ringcomm, numpy as np; w = ringcomm.init(); assert w is ringcomm.init();"
            "print(w.rank(), w.size(), ringcomm.all_sum(np.arange(3)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1", "[0,", "1,", "2]"]


def test_strict_init_names_the_missing_variables() -> None:
    code = "import ringcomm; ringcomm.init(strict=True)"
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0
    assert "InitError" in out.stderr and "RINGCOMM_RANK" in out.stderr
    assert "RINGCOMM_HOSTFILE" in out.stderr and "ringcomm launch" in out.stderr


def test_a_half_set_environment_is_an_error_not_size_1(tmp_path) -> None:
    code = "import ringcomm; ringcomm.init()"
    out = subprocess.run([sys.executable, "-c", code], env=env(RINGCOMM_RANK="0"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "RINGCOMM_HOSTFILE" in out.stderr, out.stderr


@pytest.mark.parametrize("environ, expected", [
    ({}, "single"),
    ({"RINGCOMM_RANK": "0", "RINGCOMM_HOSTFILE": "h"}, "ring"),
    ({"MLX_RANK": "1", "MLX_HOSTFILE": "h"}, "ring"),
    ({"RINGCOMM_BACKEND": "mpi"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),
    ({"OMPI_COMM_WORLD_SIZE": "1"}, "single"),
    ({"PMI_SIZE": "2"}, "mpi"),
])
def test_backend_choice(environ: dict, expected: str) -> None:
    assert group_mod._choose("any", environ) == expected


def test_backend_names_are_checked_and_unknown_ones_are_unavailable() -> None:
    with pytest.raises(ValueError, match="backend must be one of any, ring, mpi, got 'nccl'"):
        group_mod._choose("nccl", {})
    assert ringcomm.is_available("gloo") is False and ringcomm.is_available("nccl") is False
    assert ringcomm.is_available() and ringcomm.is_available("ring")


def test_the_backend_name_literal_lists_the_registry() -> None:
    from typing import get_args

    from ringcomm import backends

    assert get_args(backends.BackendName) == ("any", *backends.names())


def test_size_1_collectives_return_their_input() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for fn in (ringcomm.all_sum, ringcomm.all_max, ringcomm.all_min, ringcomm.broadcast,
               ringcomm.all_gather, ringcomm.sum_scatter):
        y = fn(x)
        assert np.array_equal(y, x) and y.dtype == x.dtype and y is not x
    assert ringcomm.all_gather(np.float64(2.5)).shape == (1,)
    for op in ringcomm.ReduceOp:
        y = ringcomm.all_reduce(np.arange(4, dtype=np.int64 if op.value[0] == "b" else float), op)
        assert y.tolist() == [0, 1, 2, 3], op
    x2 = np.arange(6.0).reshape(3, 2)
    assert ringcomm.all_gather_v(x2).tolist() == x2.tolist()
    assert ringcomm.reduce_scatter_v(x2, [3], "max").tolist() == x2.tolist()
    assert ringcomm.all_to_all_v(x2, [3], [3]).tolist() == x2.tolist()
    alone = ringcomm.new_group([0], tag="alone")
    assert alone.size() == 1 and ringcomm.all_sum(np.ones(2), group=alone).tolist() == [1, 1]
    assert ringcomm.all_sum(np.float64(2.5)).shape == ()
    ringcomm.barrier()
    assert ringcomm.init().split(3).size() == 1


def test_argument_errors_say_what_was_wrong() -> None:
    with pytest.raises(TypeError, match=r"all_reduce\(avg\): no reduction of int32 arrays"):
        ringcomm.all_reduce(np.ones(3, dtype=np.int32), "avg")
    with pytest.raises(TypeError, match="bitwise"):
        ringcomm.reduce_scatter(np.ones(2), ringcomm.ReduceOp.BXOR)
    with pytest.raises(ValueError, match="unknown reduce op 'mean'"):
        ringcomm.all_reduce(np.ones(3), "mean")
    with pytest.raises(TypeError, match="counts is required"):
        ringcomm.reduce_scatter_v(np.ones(3), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unsupported dtype"):
        ringcomm.all_sum(np.array(["a"]))
    with pytest.raises(TypeError, match="expecting an array"):
        ringcomm.all_sum(object())
    with pytest.raises(ValueError, match="this rank"):
        ringcomm.send(np.ones(2), 0)
    with pytest.raises(ValueError, match=r"dst must be in \[0, 1\)"):
        ringcomm.send(np.ones(2), 5)
    with pytest.raises(ValueError, match="color must be >= 0"):
        ringcomm.init().split(-1)
    with pytest.raises(ValueError, match="sum_scatter"):
        ringcomm.sum_scatter(np.float32(1))


def test_timeout_must_be_positive() -> None:
    with pytest.raises(InitError, match="RINGCOMM_TIMEOUT"):
        group_mod._timeout(None, {"RINGCOMM_TIMEOUT": "soon"})
    with pytest.raises(InitError, match="positive"):
        group_mod._timeout(None, {"RINGCOMM_TIMEOUT": "-1"})
    assert group_mod._timeout(None, {}) == 300.0


# --- asynchronous calls: the per-group queue, without ranks ------------------------


def test_calls_run_in_the_order_they_were_made_and_blocking_calls_wait_their_turn() -> None:
    import threading
    import time

    from ringcomm.group import Calls, Work

    calls = Calls("test")
    order: list[str] = []
    gate = threading.Event()

    def first() -> str:
        gate.wait(5)
        order.append("first")
        return "a"

    w1 = calls.run(first, async_op=True)
    w2 = calls.run(lambda: order.append("second") or "b", async_op=True)
    assert isinstance(w1, Work) and not w1.done() and calls.in_flight == 2
    threading.Timer(0.2, gate.set).start()
    t = time.monotonic()
    assert calls.run(lambda: order.append("blocking") or "c") == "c"  # queued behind both
    assert time.monotonic() - t >= 0.15
    assert order == ["first", "second", "blocking"]
    assert w1.wait() == "a" and w2.result(timeout=1) == "b"
    assert not w1.cancel() and calls.drain(1.0)


def test_a_calls_error_surfaces_from_its_work_with_its_type() -> None:
    from ringcomm.errors import MismatchError
    from ringcomm.group import Calls

    calls = Calls("test")

    def bad() -> None:
        raise MismatchError("all_sum mismatch")

    work = calls.run(bad, async_op=True)
    with pytest.raises(MismatchError, match="all_sum mismatch"):
        work.wait(timeout=5)
    assert calls.run(lambda: 7) == 7  # the queue goes on


def test_async_op_in_a_group_of_one_returns_a_work_of_the_result() -> None:
    x = np.arange(4.0)
    work = ringcomm.all_sum(x, async_op=True, group=ringcomm.init())
    assert isinstance(work, ringcomm.Work)
    assert np.array_equal(work.wait(timeout=5), x)
    avg = ringcomm.average_gradients({"g": x}, async_op=True)
    assert avg.result(timeout=5)["g"] is x
