"""A short run of the compiled core's fuzzer (benchmarks/fuzz_core.py), part of every run.

The fuzzer drives the core's Segment, Channel and pair_allreduce with random state and
arguments from fixed seeds and checks each case's code or exception, the bytes the call left
in the shared memory, and every DONE result against NumPy. Long runs, and runs under the
sanitizers (.ci/sanitize), use the same cases: `python benchmarks/fuzz_core.py --cases N
--seed S`.
"""

from __future__ import annotations

import importlib.util
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = 4000  # per seed: a fraction of a second


def _load() -> tuple[types.ModuleType | None, str]:
    try:
        from ringcomm import _native  # type: ignore[attr-defined] # noqa: F401
    except ImportError as e:  # pragma: no cover - a machine without a compiler
        return None, f"the compiled core is not built here ({e})"
    spec = importlib.util.spec_from_file_location("fuzz_core", ROOT / "benchmarks" / "fuzz_core.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, ""


fuzz, WHY = _load()
pytestmark = pytest.mark.skipif(fuzz is None, reason=WHY)


def run(seed: int, cases: int) -> Counter[str]:
    f = fuzz.Fuzzer(seed)
    try:
        f.run(cases)
    finally:
        f.close()
    assert f.cases == cases
    assert not f.wrong, "\n".join(f.wrong[:10])
    return f.outcomes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_core_survives_random_inputs_and_answers_each_as_its_state_calls_for(
        seed: int) -> None:
    outcomes = run(seed, CASES)
    assert outcomes["WRONG"] == 0
    assert sum(outcomes.values()) >= CASES


def test_the_fuzzer_reaches_every_code_and_error_of_every_call() -> None:
    seen = run(3, 3 * CASES)
    want = {f"segment.allreduce {c}" for c in ("DONE", "PENDING", "MISMATCH", "GONE", "REDUCE",
                                                "ValueError", "TypeError", "OverflowError")}
    want |= {f"segment.finish {c}" for c in ("DONE", "GONE", "MISMATCH", "REDUCE",
                                             "RuntimeError", "ValueError")}
    want |= {f"channel.send {c}" for c in ("DONE", "PENDING", "RuntimeError", "TypeError")}
    want |= {f"channel.recv {c}" for c in ("DONE", "PENDING", "MISMATCH", "RuntimeError",
                                           "ValueError")}
    want |= {f"pair_allreduce {c}" for c in ("DONE", "PENDING", "MISMATCH", "GONE", "REDUCE",
                                             "ValueError", "TypeError")}
    want |= {"init.Segment made", "init.Segment ValueError", "init.Channel made",
             "init.Channel ValueError", "reinit.Segment ValueError", "reinit.Channel ValueError",
             "closed.Segment ValueError", "closed.Channel ValueError"}
    assert want <= set(seen), sorted(want - set(seen))


def test_a_seed_gives_the_same_cases() -> None:
    assert run(7, 1500) == run(7, 1500)
    assert run(7, 1500) != run(8, 1500)


def test_the_fuzzer_catches_a_core_that_answers_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    real = fuzz._native

    def pair_allreduce(*args: object) -> object:
        got = real.pair_allreduce(*args)
        if got[0] == fuzz.DONE and len(args) == 11:
            out = np.frombuffer(args[7], np.uint8)  # type: ignore[call-overload]
            if out.size:
                out[0] ^= 0x10  # one bit of the result off
        return got

    monkeypatch.setattr(fuzz, "_native", types.SimpleNamespace(
        Segment=real.Segment, Channel=real.Channel, pair_allreduce=pair_allreduce))
    f = fuzz.Fuzzer(4)
    try:
        f.run(2000)
    finally:
        f.close()
    assert f.outcomes["WRONG"] > 0
    assert all("pair_allreduce: DONE with the wrong result" in w for w in f.wrong)


def test_the_command_line_prints_the_cases_and_their_outcomes(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert fuzz.main(["--cases", "1200", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "seed 5: 1200 cases in" in out
    assert "segment.allreduce DONE" in out and "WRONG" not in out
