"""Bad input that once gave a silent wrong answer or an uncaught crash: ranks that loaded
different cores, shapes of many dimensions, objects a stranger or a broken peer sends,
more local ranks than the links' budget holds."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from ringcomm.errors import MismatchError, RingcommError
from ringcomm.signature import Op, Signature
from ringcomm.transport import header, shm
from tests import harness
from tests.harness import env, run_direct, run_together

# -- ranks that loaded different cores agree on every path --------------------------------


@pytest.mark.timeout(90)
def test_ranks_with_and_without_the_compiled_core_reduce_alike() -> None:
    # 40 KB fits a slot where every rank runs the core, and takes the chunked path where a
    # rank reduces in Python: the ranks must take the same one.
    code = ("import numpy as np, ringcomm\n"
            "w = ringcomm.init()\n"
            "for n in (4, 10_000, 16_384, 100_000):\n"
            "    y = ringcomm.all_sum(np.full(n, w.rank() + 1.0, np.float32))\n"
            "    assert (y == 10.0).all(), (n, y[:4])\n"
            "print('ok', ringcomm.native.PATH, flush=True)\n")
    token = secrets.token_hex(8)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump([[f"127.0.0.1:{p}"] for p in harness.free_ports(4)], f)
        f.flush()
        jobs = run_together(
            [([sys.executable, "-c", code],
              env(RINGCOMM_HOSTFILE=f.name, RINGCOMM_TOKEN=token, RINGCOMM_RANK=str(r),
                  RINGCOMM_NATIVE="1" if r < 2 else "0")) for r in range(4)], timeout=60)
    for r, job in enumerate(jobs):
        assert job.returncode == 0, job.stderr[-2000:]
        assert job.stdout.split() == ["ok", "native" if r < 2 else "python"], job.stdout


# -- shapes of more dimensions than the header holds ----------------------------------------


def test_a_twelve_dimension_shape_that_differs_past_the_eleventh_is_a_mismatch() -> None:
    from ringcomm.backends.ring.call import header_check

    mine = Signature(Op.ALL_SUM, 3, 1, np.dtype(np.float32), (1,) * 11 + (2,), 0)
    theirs = mine._replace(shape=(1,) * 11 + (3,), rank=1)
    check = header_check(mine, 1, 2, "world", "rank 1")
    check(memoryview(header.pack(mine._replace(rank=1))))  # the same call passes
    with pytest.raises(MismatchError, match="the shapes differ"):
        check(memoryview(header.pack(theirs)))
    deeper = mine._replace(shape=(1,) * 12 + (2,))  # another number of dimensions
    with pytest.raises(MismatchError, match="the shapes differ"):
        check(memoryview(header.pack(deeper)))


@pytest.mark.timeout(60)
def test_twelve_dimension_shapes_that_differ_raise_on_both_ranks_over_tcp() -> None:
    jobs = run_direct(2, "bad_input.py", "deep_shapes", timeout=45, RINGCOMM_TRANSPORT="tcp",
                      RINGCOMM_TIMEOUT="20")
    for r, job in enumerate(jobs):
        assert f"rank {r}: MismatchError" in job.stdout, (job.stdout, job.stderr[-1500:])
        assert "the shapes differ" in job.stdout


# -- objects: lengths a peer chooses, and messages a stranger on the path could change -----


@pytest.mark.timeout(60)
def test_an_object_larger_than_the_cap_is_refused_with_a_clear_error() -> None:
    jobs = run_direct(2, "bad_input.py", "big_object", timeout=45,
                      RINGCOMM_MAX_OBJECT_BYTES="1048576")
    for r, job in enumerate(jobs):
        assert f"rank {r}: RingcommError" in job.stdout, (job.stdout, job.stderr[-1500:])
        assert "RINGCOMM_MAX_OBJECT_BYTES" in job.stdout and "3145" in job.stdout


def test_an_object_message_with_a_changed_byte_never_reaches_unpickle() -> None:
    from ringcomm import objects

    key = b"k" * 32
    sealed = objects.seal(key, b"context", b"pickled bytes")
    assert objects.open_sealed(key, b"context", sealed) == b"pickled bytes"
    for i in (0, len(sealed) // 2, len(sealed) - 1):
        changed = bytearray(sealed)
        changed[i] ^= 1
        with pytest.raises(RingcommError, match="not authentic"):
            objects.open_sealed(key, b"context", bytes(changed))
    with pytest.raises(RingcommError, match="not authentic"):
        objects.open_sealed(key, b"another call", sealed)


# -- more local ranks than the budget of links ---------------------------------------------


@pytest.mark.parametrize("count", [16, 17, 64, 256, 300])
def test_the_links_of_many_local_ranks_keep_the_budget_or_are_refused(count: int) -> None:
    for sets in (1, 2):
        cap = shm.link_bytes(count, sets)
        if cap == 0:
            assert count > 16, (count, sets)  # refused: the group's links take TCP
            continue
        assert cap >= shm.MIN_LINK_BYTES
        assert sets * count * (count - 1) * cap <= shm.LINK_BUDGET, (count, sets, cap)


def test_more_local_ranks_than_the_core_holds_keep_tcp() -> None:
    from ringcomm.backends.ring import sharing

    assert sharing.too_many(shm.MAX_LOCAL_RANKS) is None
    problem = sharing.too_many(shm.MAX_LOCAL_RANKS + 1)
    assert problem is not None and str(shm.MAX_LOCAL_RANKS) in problem


# -- hosts and peers the library cannot serve correctly ------------------------------------


def test_a_32_bit_python_is_refused_at_import() -> None:
    code = ("import sys; sys.maxsize = 2**31 - 1\n"
            "try:\n    import ringcomm\nexcept ImportError as e:\n    print(e)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=env())
    assert "needs a 64-bit Python" in run.stdout, (run.stdout, run.stderr)


def test_an_abort_notice_longer_than_any_rank_sends_is_refused_unread() -> None:
    import struct

    from ringcomm.transport import abort

    body = struct.pack("<BI", 2, abort.NOTE_LIMIT + 1)
    reads: list[int] = []

    def read_exact(n: int) -> bytes:
        reads.append(n)
        return body if n == len(body) else b"x" * n

    with pytest.raises(ValueError, match="abort notice"):
        abort.decode(read_exact)
    assert reads == [len(body)]  # the length was read; the body was not
    text, kind = abort.decode(lambda n: abort.encode("why", abort.Reason.CAUSE)[:n]
                              if n == len(body) else b"why")
    assert (text, kind) == ("why", abort.Reason.CAUSE)
