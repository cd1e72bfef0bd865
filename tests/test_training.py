"""Tree utilities, the average_gradients planner and packing, and data-parallel equivalence."""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ringcomm
import ringcomm.ops
from ringcomm.backends.base import Backend
from ringcomm.signature import ReduceOp
from ringcomm.training import Bucket, plan_buckets
from tests.harness import ROOT, env, launch_argv, run, run_case

Point = collections.namedtuple("Point", "x y")


# --- tree utilities -------------------------------------------------------------


def test_tree_flatten_keys_and_order():
    a, b, c = np.zeros(1), np.ones(2), np.ones(3)
    tree = {"w": a, "layers": [{"b": b}, (c, None)]}
    assert [k for k, _ in ringcomm.tree_flatten(tree)] == ["w", "layers.0.b", "layers.1.0", "layers.1.1"]
    assert ringcomm.tree_flatten(a) == [("", a)]
    assert ringcomm.tree_flatten({"a": a}, prefix="model")[0][0] == "model.a"
    assert ringcomm.tree_flatten({}) == []


def test_tree_unflatten_inverts_flatten_for_dicts_and_lists():
    tree = {"w": 1, "layers": [{"b": 2}, [3, 4]], "z": {"0": 5, "x": 6}}
    assert ringcomm.tree_unflatten(ringcomm.tree_flatten(tree)) == tree
    assert ringcomm.tree_unflatten([("", 7)]) == 7
    # tuples come back as lists: dotted keys do not record container types
    assert ringcomm.tree_unflatten(ringcomm.tree_flatten((1, Point(2, 3)))) == [1, [2, 3]]


@pytest.mark.parametrize("items, message", [
    ([("a.1", 1)], "needs indices 0..0"),
    ([("a", 1), ("a", 2)], "appears twice"),
    ([("a", 1), ("a.b", 2)], "below the leaf"),
    ([("", 1), ("a", 2)], "non-empty dotted string keys"),
])
def test_tree_unflatten_errors(items, message):
    with pytest.raises(ValueError, match=message):
        ringcomm.tree_unflatten(items)


def test_tree_map_keeps_container_types():
    tree = {"p": Point(1, 2), "t": (3, [4]), "o": collections.OrderedDict(a=5),
            "d": collections.defaultdict(list, b=6)}
    out = ringcomm.tree_map(lambda v: v * 10, tree)
    assert out["p"] == Point(10, 20) and type(out["p"]) is Point
    assert out["t"] == (30, [40]) and type(out["t"]) is tuple
    assert type(out["o"]) is collections.OrderedDict and out["o"]["a"] == 50
    assert out["d"].default_factory is list and out["d"]["b"] == 60
    assert tree["p"] == Point(1, 2)  # the input is untouched


def test_tree_map_with_rest_and_is_leaf():
    out = ringcomm.tree_map(lambda a, b: a + b, {"x": [1, 2]}, {"x": [10, 20], "extra": 0})
    assert out == {"x": [11, 22]}
    pairs = ringcomm.tree_map(lambda v: len(v), {"a": (1, 2), "b": [(3,)]},
                              is_leaf=lambda v: isinstance(v, tuple))
    assert pairs == {"a": 2, "b": [1]}
    with pytest.raises(ValueError, match="trees differ at 'x.1'"):
        ringcomm.tree_map(lambda a, b: a, {"x": [1, 2]}, {"x": [1]})


# --- the packing planner --------------------------------------------------------


@pytest.mark.parametrize("limit, buckets", [(32 * 2**20, 1), (200, 2), (199, 3), (40, 10),
                                             (0, 10), (-5, 10)])
def test_plan_counts_for_ten_small_float32_arrays(limit, buckets):
    plan = plan_buckets([(np.float32, 40)] * 10, limit)
    assert len(plan) == buckets
    assert sorted(i for b in plan for i in b.indices) == list(range(10))
    if limit > 0:
        assert all(b.nbytes <= limit for b in plan)


def test_plan_separates_dtypes_and_isolates_large_leaves():
    f4, f8 = np.dtype(np.float32), np.dtype(np.float64)
    plan = plan_buckets([(f4, 40), (f8, 80), (f4, 1000), (f4, 40), (f8, 80)], 200)
    assert plan == [Bucket(f4, (0,), 40), Bucket(f4, (2,), 1000),
                    Bucket(f4, (3,), 40), Bucket(f8, (1, 4), 160)]


# --- average_gradients in one process with a simulated second rank ---------------


class _TwoRanks(Backend):
    """Rank 0 of a pretend group of two whose other rank holds every value plus one."""

    name = "pretend"
    rank = 0
    size = 2

    def all_reduce_into(self, src: np.ndarray, out: np.ndarray, op: ReduceOp) -> None:
        assert op is ReduceOp.SUM
        out[...] = src + (src + 1)

    def all_gather(self, buf, out): raise NotImplementedError
    def reduce_scatter(self, buf, out, op): raise NotImplementedError
    def send(self, buf, dst): raise NotImplementedError
    def recv(self, out, src): raise NotImplementedError
    def broadcast(self, buf, root): raise NotImplementedError
    def barrier(self): raise NotImplementedError
    def split(self, color, key): raise NotImplementedError


@pytest.fixture
def counted(monkeypatch):
    calls: list[int] = []
    real = ringcomm.ops.all_sum

    def counting(x: Any, *, group: Any = None) -> Any:
        calls.append(np.asarray(x).size)
        return real(x, group=group)

    monkeypatch.setattr(ringcomm.ops, "all_sum", counting)
    return calls


@pytest.mark.parametrize("limit, count", [(32 * 2**20, 1), (200, 2), (0, 10)])
def test_average_gradients_counts_and_values(counted, limit, count):
    group = ringcomm.Group(_TwoRanks())
    grads = [np.arange(10, dtype=np.float32) * i for i in range(10)]
    out = ringcomm.average_gradients(grads, group=group, all_reduce_size=limit)
    assert len(counted) == count
    assert type(out) is list and len(out) == 10
    for g, o in zip(grads, out):
        assert o.dtype == np.float32 and o.shape == g.shape
        np.testing.assert_array_equal(o, g + 0.5)
    np.testing.assert_array_equal(grads[1], np.arange(10))  # inputs untouched


def test_average_gradients_keeps_tree_types_and_none(counted):
    torch = pytest.importorskip("torch")
    group = ringcomm.Group(_TwoRanks())
    grads = {"p": Point(np.ones((2, 3)), torch.ones(4, dtype=torch.float32)),
             "none": None, "bf": torch.ones(3, dtype=torch.bfloat16),
             "t": (np.zeros((3, 2)).T,)}  # non-contiguous
    out = ringcomm.average_gradients(grads, group=group)
    assert len(counted) == 3  # float64, float32, bfloat16
    assert type(out["p"]) is Point and out["none"] is None and type(out["t"]) is tuple
    np.testing.assert_array_equal(out["p"].x, np.full((2, 3), 1.5))
    assert isinstance(out["p"].y, torch.Tensor) and out["p"].y.dtype == torch.float32
    assert out["bf"].dtype == torch.bfloat16 and out["bf"].float().tolist() == [1.5] * 3
    np.testing.assert_array_equal(out["t"][0], np.full((2, 3), 0.5))


def test_average_gradients_results_survive_the_next_call():
    group = ringcomm.Group(_TwoRanks())
    first = ringcomm.average_gradients([np.zeros(3), np.zeros(2)], group=group)
    second = ringcomm.average_gradients([np.ones(3), np.ones(2)], group=group)
    np.testing.assert_array_equal(first[0], np.full(3, 0.5))
    np.testing.assert_array_equal(second[1], np.full(2, 1.5))


@pytest.mark.parametrize("wire", ["float16", "bfloat16-torch", "float16-mlx"])
def test_average_gradients_communication_type(monkeypatch, wire):
    name, _, lib = wire.partition("-")
    dtype = name if not lib else getattr(pytest.importorskip(
        {"torch": "torch", "mlx": "mlx.core"}[lib]), name)
    sent: list[np.dtype] = []
    real = ringcomm.ops.all_sum
    monkeypatch.setattr(ringcomm.ops, "all_sum",
                        lambda x, *, group=None: sent.append(x.dtype) or real(x, group=group))
    grads = [np.arange(10, dtype=np.float32) * i for i in range(10)]
    out = ringcomm.average_gradients(grads, ringcomm.Group(_TwoRanks()), 100, dtype)
    assert [str(d) for d in sent] == [name, name]  # 200 bytes on the wire, 100 per buffer
    for g, o in zip(grads, out):
        assert o.dtype == np.float32
        np.testing.assert_array_equal(o, g + 0.5)
    with pytest.raises(TypeError, match="communication_type must be a floating dtype"):
        ringcomm.average_gradients(grads, ringcomm.Group(_TwoRanks()), communication_type="int8")


def test_average_gradients_size_one_is_the_identity(counted):
    grads = {"w": np.ones(3)}
    assert ringcomm.average_gradients(grads) is grads
    assert counted == []


def test_average_gradients_rejects_integer_gradients():
    with pytest.raises(TypeError, match="expecting floating-point gradients, got int64 at 'a.0'"):
        ringcomm.average_gradients({"a": [np.ones(2, np.int64)]}, group=ringcomm.Group(_TwoRanks()))


# --- data-parallel equivalence across 1, 2 and 4 ranks ---------------------------

DIGITS = ROOT / "examples" / "train_digits.py"
ARGS = ("--epochs", "3", "--json")


def _results(stdout: str) -> list[dict]:
    return [json.loads(line[line.index("{"):]) for line in stdout.splitlines()
            if '"final_loss"' in line]


def _alone(script: Path, *args: str) -> str:
    """Run `script` as one plain process (no launcher); return its output."""
    r = run([sys.executable, str(script), *args], timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _launched(n: int, script: Path, *args: str) -> str:
    """Run `script` on `n` ranks through ``ringcomm launch``; return its output."""
    r = run(launch_argv("-n", str(n), str(script), *args), timeout=150,
            environ=env(RINGCOMM_TIMEOUT="60"))
    assert r.returncode == 0, f"n={n}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.timeout(150)
def test_digits_single_process_learns():
    pytest.importorskip("sklearn")
    out = _alone(DIGITS, *ARGS)
    (res,) = _results(out)
    assert res["size"] == 1 and res["identical"] and res["test_acc"] > 0.9
    assert "loss" in out and "samples/s" in out and "\x1b[" not in out


@pytest.mark.timeout(240)
def test_digits_same_loss_and_identical_weights_on_1_2_4_ranks():
    pytest.importorskip("sklearn")
    (ref,) = _results(_alone(DIGITS, *ARGS))
    for n in (2, 4):
        res = _results(_launched(n, DIGITS, *ARGS))
        assert sorted(x["rank"] for x in res) == list(range(n))
        assert len({x["checksum"] for x in res}) == 1 and all(x["identical"] for x in res)
        for x in res:
            assert x["size"] == n
            assert abs(x["final_loss"] - ref["final_loss"]) < 1e-5, (n, x, ref)
            assert x["test_acc"] == pytest.approx(ref["test_acc"], abs=1e-9)


@pytest.mark.timeout(240)
def test_digits_with_the_overlapping_reducer_follows_the_same_trajectory_bit_for_bit():
    # Gradients averaged during backprop (GradientReducer) give the very weights that
    # average_gradients after backprop gives: the same sums in the same rank order.
    pytest.importorskip("sklearn")
    plain = _results(_launched(3, DIGITS, *ARGS))
    overlapped = _results(_launched(3, DIGITS, *ARGS, "--overlap"))
    assert {x["checksum"] for x in overlapped} == {x["checksum"] for x in plain}
    assert len({x["checksum"] for x in overlapped}) == 1
    assert all(x["identical"] and x["test_acc"] > 0.9 for x in overlapped)


@pytest.mark.timeout(150)
def test_torch_overlapping_reducer_trains_to_the_weights_of_average_gradients():
    # On each of 3 ranks (the order of a sum matters from 3 on), the same torch model trained
    # with GradientReducer (one bucket per parameter) and with average_gradients (one packed
    # buffer) from the same start: equal weights to the bit, as the sums are the same sums in
    # rank order; equal on every rank; and within 1e-6 of one process on the whole batch.
    pytest.importorskip("torch")
    run_case(3, "training.py", "overlap", timeout=120, RINGCOMM_TIMEOUT="60")


@pytest.mark.timeout(240)
def test_torch_example_with_the_overlapping_reducer_matches_average_gradients():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    script = ROOT / "examples" / "train_torch.py"
    plain = _launched(2, script, "--epochs", "1")
    overlapped = _launched(2, script, "--epochs", "1", "--overlap")
    final = re.compile(r"epoch .* loss (\S+) .*|test accuracy (\S+ \(\d+/\d+\)); "
                       r"largest weight difference between ranks (\S+)")
    a, b = final.findall(plain), final.findall(overlapped)
    assert len(a) == 2 and len(b) == 2, (plain, overlapped)
    # The example prints its epoch's loss and its test accuracy, not its weights: with the very
    # weights of average_gradients (the test above), both are the same to the last digit, and
    # every rank holds the same weights.
    assert b == a, (plain, overlapped)
    assert b[1][2] == "0", overlapped


@pytest.mark.timeout(120)
def test_average_gradients_counts_in_ranks():
    run_case(2, "training.py", "counts", RINGCOMM_TIMEOUT="60")


@pytest.mark.timeout(240)
def test_torch_example_matches_single_process_at_two_ranks():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    script = ROOT / "examples" / "train_torch.py"
    single = _alone(script, "--epochs", "1")
    launched = _launched(2, script, "--epochs", "1")

    def loss(out: str) -> float:
        m = re.search(r"epoch\s+1/1\s+loss (\S+)", out)
        assert m, out
        return float(m.group(1))

    assert abs(loss(launched) - loss(single)) < 1e-3
    assert "largest weight difference between ranks 0" in launched
