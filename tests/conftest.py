"""Checks that hold after every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import harness


def _openmpi_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("sm_segment.")}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_segment_outlives_a_test() -> Iterator[None]:
    """No test leaves a shared-memory segment in /dev/shm, however its ranks ended: ringcomm's,
    or OpenMPI's (sm_segment.*) made during the test."""
    before = _openmpi_segments()
    yield
    harness.assert_no_segments_left("the test")
    new = _openmpi_segments() - before
    harness.remove_segments(new)
    assert not new, f"OpenMPI's shared-memory segments outlived the test: {sorted(new)}"
