"""The conformance suite: every public op, dtype and shape class, on each backend at sizes 1-4.

The assertions live in tests/ranks/conformance.py and run inside every rank.
"""

from __future__ import annotations

import pytest

from _jobs import run


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.timeout(180)
def test_ring(n: int) -> None:
    job = run(n, "conformance.py", "ring", timeout=150)
    assert job.returncode == 0, job.stderr[-3000:]
    passed = job.lines("rank ")
    assert len(passed) == n, job.stdout
    for line in passed:
        assert line.endswith("cases passed") and int(line.split()[2]) > 800, line
