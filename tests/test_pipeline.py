"""The ring schedule as pure functions: what each lane sends and receives, step by step."""

from __future__ import annotations

import pytest

from ringcomm.backends.ring.algorithms import pipeline as _pipeline


@pytest.mark.parametrize("n, parts", [(0, 3), (1, 4), (10, 3), (12, 4), (7, 7)])
def test_even_tiles_the_range(n: int, parts: int) -> None:
    cuts = _pipeline.even(n, parts)
    assert cuts[0][0] == 0 and cuts[-1][1] == n and len(cuts) == parts
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    assert max(b - a for a, b in cuts) - min(b - a for a, b in cuts) <= 1


@pytest.mark.parametrize("size", [2, 3, 4, 5])
@pytest.mark.parametrize("direction", [1, -1])
def test_all_reduce_steps_forward_what_was_received(size: int, direction: int) -> None:
    for rank in range(size):
        steps = _pipeline.steps(rank, size, direction, lambda i: (i, i + 1), size - 1, size - 1)
        assert len(steps) == 2 * (size - 1)
        # Every step but the first sends the segment the previous step received.
        for prev, step in zip(steps, steps[1:]):
            assert step.send == prev.recv
        reduce_scatter, all_gather = steps[: size - 1], steps[size - 1:]
        assert all(s.reduce for s in reduce_scatter) and not any(s.reduce for s in all_gather)
        # After the reduce-scatter the rank owns its own block, and sends it first.
        assert reduce_scatter[-1].recv == (rank, rank + 1)
        assert all_gather[0].send == (rank, rank + 1)
        # The all-gather brings every other block exactly once.
        assert sorted(s.recv[0] for s in all_gather) == [i for i in range(size) if i != rank]


@pytest.mark.parametrize("size", [2, 3, 4])
def test_neighbours_agree_on_what_travels(size: int) -> None:
    """What rank r sends at step t is what its neighbour in that direction receives at step t."""
    for direction in (1, -1):
        plan = {r: _pipeline.steps(r, size, direction, lambda i: (i, i + 1), size - 1, size - 1)
                for r in range(size)}
        for r in range(size):
            to = (r + direction) % size
            for mine, theirs in zip(plan[r], plan[to]):
                assert mine.send == theirs.recv


def test_lanes_cover_every_block_once_per_direction() -> None:
    right, left = ["R0", "R1"], ["L0", "L1"]  # two links per neighbour
    blocks = [(0, 10), (10, 20), (20, 30)]
    checked = []
    lanes = _pipeline.lanes(1, 3, right, left, blocks, 2, 2,  # type: ignore[arg-type]
                            lambda r: (lambda raw: checked.append(r)))
    assert len(lanes) == 4
    assert [(lane.send_link, lane.recv_link) for lane in lanes] == [
        ("R0", "L0"), ("R1", "L1"), ("L0", "R0"), ("L1", "R1")]
    for lane in lanes:  # each lane checks the header of the rank it receives from
        lane.check(memoryview(b""))
    assert checked == [0, 0, 2, 2]
    # Every element of every block is reduced by exactly one lane.
    owned = sorted(lane.steps[1].recv for lane in lanes)  # the block this rank owns, per lane
    covered = [i for a, b in owned for i in range(a, b)]
    assert covered == list(range(10, 20))
