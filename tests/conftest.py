"""Checks that hold after every test, and strict mode: in CI a missing part fails, not skips.

Strict mode is on when ``RINGCOMM_STRICT`` is set to a true value (1, true, yes, on), or,
with ``RINGCOMM_STRICT`` unset, when ``CI`` is set to anything but an empty or false value
(CI services set ``CI=true``). In strict mode a test, or a test file, that skips because a
part CI installs is missing (the compiled core, torch, mlx, JAX, MPI, the namespace test
hosts, Slurm, ...) fails instead, naming what is missing: a green run then means that every
part was there and tested. The parts are recognised by the reasons the tests give when they
skip (`MISSING_PARTS`); a skip for anything else (no GPU, too little memory, no network
route) stays a skip, and ``-rs`` lists every skip and its reason in the summary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator

import pytest

from tests import harness

STRICT_VAR = "RINGCOMM_STRICT"
_FALSE = ("", "0", "false", "no", "off")

# (pattern of a skip's reason, what is missing, how CI gets it). The patterns match the
# reasons the tests give today (grep -rn skip tests/); a new skip for one of these parts
# should reuse a reason these match.
MISSING_PARTS: list[tuple[re.Pattern[str], str, str]] = [(re.compile(p, re.IGNORECASE), what, how)
                                                         for p, what, how in [
    (r"compiled core is not built", "ringcomm's compiled core (ringcomm/csrc/)",
     "`pip install -e .` builds it with the C compiler CI has (.ci/setup)"),
    (r"no C compiler", "a C compiler", "CI builds the compiled core with it"),
    (r"could not import 'torch|\btorch(run)?\b.*(not installed|has no)", "torch",
     ".ci/setup installs torch==2.13.0 (CPU)"),
    (r"could not import 'mlx|\bmlx\b.*not installed", "mlx", '.ci/setup installs "mlx[cpu]"'),
    (r"could not import 'jax|\bjax\b.*pip install jax", "JAX", ".ci/setup installs jax"),
    (r"could not import 'ml_dtypes|ml_dtypes", "ml_dtypes", ".ci/setup installs the test extra"),
    (r"could not import 'mpi4py|mpi4py not installed|mpirun not (found|installed)|needs mpirun",
     "MPI (mpi4py and OpenMPI's mpirun)", ".ci/setup installs the mpi extra"),
    (r"multihost tests need root|sshd missing|ssh missing|ssh-keygen missing"
     r"|ip or nsenter missing|ip netns add failed",
     "the namespace test hosts (root, ip netns, sshd)",
     ".ci/setup installs openssh-server and iproute2; CI runs as root"),
    (r"Slurm tests need", "Slurm and munge", ".ci/setup-slurm installs them"),
    (r"needs root", "root", "CI runs as root, as the namespace test hosts need"),
    (r"could not import 'sklearn", "scikit-learn", ".ci/setup installs the test extra"),
    (r"matplotlib is not installed|could not import 'matplotlib", "matplotlib",
     ".ci/setup installs the plot extra"),
    # Not installed, but always there on Linux, where CI runs: absent, something is broken.
    (r"no shared memory here", "POSIX shared memory", "Linux has it"),
    (r"127\.0\.0\.2 is not an address", "the loopback addresses 127/8", "Linux has all of them"),
]]


def strict_mode() -> bool:
    """Return whether a skip for a missing part fails (CI, or RINGCOMM_STRICT=1)."""
    own = os.environ.get(STRICT_VAR)
    if own is not None:
        return own.strip().lower() not in _FALSE
    return os.environ.get("CI", "").strip().lower() not in _FALSE


def _reason(longrepr: object) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def missing_part(reason: str) -> str | None:
    """Return the failure message for a skip whose `reason` is a part CI installs, else None."""
    for pattern, what, how in MISSING_PARTS:
        if pattern.search(reason):
            return (f"strict mode ({STRICT_VAR}=1 or CI set): missing {what}, which CI has "
                    f"({how}); the test would have skipped: {reason}")
    return None


def pytest_report_header(config: pytest.Config) -> str:
    if strict_mode():
        return "ringcomm strict mode: a skip for a part CI installs fails"
    return f"ringcomm strict mode: off (set {STRICT_VAR}=1 or CI=true to fail on missing parts)"


def _fail_if_missing(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and strict_mode():
        message = missing_part(_reason(report.longrepr))
        if message is not None:
            report.outcome = "failed"
            report.longrepr = message


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _fail_if_missing(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector
                               ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    # A whole file that skips (a module-level importorskip) fails to collect instead.
    report = yield
    _fail_if_missing(report)
    return report


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
