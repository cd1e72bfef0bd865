"""Checks that hold after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import harness


@pytest.fixture(autouse=True)
def no_segment_outlives_a_test() -> Iterator[None]:
    """No test leaves a ringcomm shared-memory segment in /dev/shm, however its ranks ended."""
    yield
    harness.assert_no_segments_left("the test")
