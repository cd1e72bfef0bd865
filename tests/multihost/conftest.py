"""Session fixture: three ssh hosts on this machine built with ``ip netns``.

See ``netns.py`` for how the hosts are built. Every test in this directory is
marked ``multihost`` and skips with a reason when the hosts cannot be built
(not root, no ``ip netns``, no sshd).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost import netns


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.multihost)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.Cluster]:
    """Build three namespace hosts with sshd; put the test ssh first on PATH."""
    reason = netns.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    built = netns.build(tmp_path_factory.mktemp("hosts"), count=3)
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{built.bin_dir}{os.pathsep}{old_path}"
    try:
        yield built
    finally:
        os.environ["PATH"] = old_path
        left = netns.teardown(built)
        assert not left, f"test hosts not fully removed: {left}"
