"""In-rank cases of the torch.distributed backend: every op against a one-process reference.

Run inside ranks: ``ringcomm launch -n N tests/ranks/torch_backend.py CASE`` (or torchrun,
or ranks started by hand). Each case asserts on every rank and ends with ``ok CASE rank R``.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

import ringcomm.torch

R = dist.ReduceOp
# What gloo accepts (torch 2.x): these dtypes for every collective, and these reductions.
GLOO_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16,
               torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]
MORE_DTYPES = [torch.int16, torch.uint16, torch.uint32, torch.uint64]  # ringcomm's, not gloo's
OPS = {"SUM": R.SUM, "AVG": R.AVG, "PRODUCT": R.PRODUCT, "MIN": R.MIN, "MAX": R.MAX,
       "BAND": R.BAND, "BOR": R.BOR, "BXOR": R.BXOR}


def init() -> tuple[int, int]:
    dist.init_process_group("ringcomm", timeout=datetime.timedelta(seconds=30))
    return dist.get_rank(), dist.get_world_size()


def value(r: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Rank r's contribution: small numbers (products of p ranks stay exact)."""
    base = (torch.arange(n) + r) % 3
    if dtype is torch.bool:
        return base > 0
    if dtype.is_complex:
        return (base + 1j * (r % 2)).to(dtype)
    return (base + (1 if dtype.is_floating_point else 0)).to(dtype)


def reference(name: str, p: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The reduction over p ranks, computed in one process (in float64/int64/complex128)."""
    wide = torch.complex128 if dtype.is_complex else torch.float64 \
        if dtype.is_floating_point else torch.int64
    xs = [value(r, n, dtype).to(wide) for r in range(p)]
    if dtype is torch.bool and name in ("SUM", "BOR", "MAX"):
        return torch.stack(xs).amax(0).to(dtype)
    if dtype is torch.bool and name in ("PRODUCT", "BAND", "MIN"):
        return torch.stack(xs).amin(0).to(dtype)
    acc = xs[0].clone()
    for x in xs[1:]:
        if name in ("SUM", "AVG"):
            acc = acc + x
        elif name == "PRODUCT":
            acc = acc * x
        elif name == "MIN":
            acc = torch.minimum(acc, x)
        elif name == "MAX":
            acc = torch.maximum(acc, x)
        elif name == "BAND":
            acc = acc & x
        elif name == "BOR":
            acc = acc | x
        elif name == "BXOR":
            acc = acc ^ x
    if name == "AVG":
        acc = acc / p
    return acc.to(dtype)


def accepted(name: str, dtype: torch.dtype) -> bool:
    """Whether the op takes the dtype (gloo's rules: AVG floating only, bitwise integral only;
    torch itself refuses PRODUCT/MIN/MAX/bitwise on complex)."""
    if dtype.is_complex:
        return name in ("SUM", "AVG")
    if name == "AVG":
        return dtype.is_floating_point
    if name in ("BAND", "BOR", "BXOR"):
        return not dtype.is_floating_point
    return True


def expect_error(fn, kind: type[BaseException], text: str) -> BaseException:
    try:
        fn()
    except kind as e:
        assert text in str(e), f"expected {text!r} in {e}"
        return e
    raise AssertionError(f"expected {kind.__name__} ({text!r})")


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype in (torch.float16, torch.bfloat16):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def check_reductions(r: int, p: int) -> None:
    for dtype in GLOO_DTYPES + MORE_DTYPES:
        for name, op in OPS.items():
            if dtype in MORE_DTYPES and name == "AVG":
                continue
            for n in (3, 20000):  # the latency path; queued past 64 KiB (inline below)
                t = value(r, n, dtype)
                if not accepted(name, dtype):
                    kinds = (TypeError, ValueError)
                    try:
                        dist.all_reduce(t, op=op)
                    except kinds:
                        continue
                    raise AssertionError(f"{name} on {dtype} was accepted")
                dist.all_reduce(t, op=op)
                close(t, reference(name, p, n, dtype))
    # PREMUL_SUM: sum of factor * x (gloo refuses it; NCCL's meaning).
    t = value(r, 7, torch.float32)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(2.5))
    close(t, 2.5 * reference("SUM", p, 7, torch.float32))
    t = value(r, 7, torch.float64)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(torch.tensor(0.5, dtype=torch.float64)))
    close(t, 0.5 * reference("SUM", p, 7, torch.float64))
    expect_error(lambda: dist.all_reduce(torch.ones(3, dtype=torch.int64),
                                         op=dist._make_nccl_premul_sum(2.0)),
                 TypeError, "PREMUL_SUM needs floating")
    # Non-contiguous and 0-d tensors are reduced in place.
    base = torch.arange(24.0).reshape(4, 6) * (r + 1)
    t = base[:, ::2]
    dist.all_reduce(t, op=R.MAX)
    close(base[:, ::2], torch.arange(24.0).reshape(4, 6)[:, ::2] * p)
    close(base[:, 1::2], torch.arange(24.0).reshape(4, 6)[:, 1::2] * (r + 1))  # untouched
    t = torch.arange(200000.0).reshape(1000, 200).t()  # large, non-contiguous, queued
    dist.all_reduce(t)
    close(t, torch.arange(200000.0).reshape(1000, 200).t() * p)
    z = torch.tensor(float(r))
    dist.all_reduce(z)
    assert z.item() == sum(range(p))
    # coalesced (torch wants one dtype), a non-contiguous one among them
    a, b = value(r, 10, torch.float32), value(r, 12, torch.float32).reshape(3, 4).t()
    dist.all_reduce_coalesced([a, b])
    close(a, reference("SUM", p, 10, torch.float32))
    close(b, reference("SUM", p, 12, torch.float32).reshape(3, 4).t())
    a = value(r, 6, torch.float64)
    dist.all_reduce_coalesced([a], op=R.AVG)
    close(a, reference("AVG", p, 6, torch.float64))


def check_reduce_scatter(r: int, p: int) -> None:
    for dtype in (torch.float32, torch.int64, torch.bfloat16, torch.bool, torch.complex64):
        for name in ("SUM", "MAX", "AVG", "BXOR"):
            if not accepted(name, dtype) or (dtype.is_complex and name != "SUM"):
                continue
            full = reference(name, p, 4 * p, dtype)
            out = torch.empty(4, dtype=dtype)
            dist.reduce_scatter_tensor(out, value(r, 4 * p, dtype), op=OPS[name])
            close(out, full[4 * r:4 * r + 4])
            outs = [torch.empty(4, dtype=dtype)]
            ins = list(value(r, 4 * p, dtype).split(4))
            dist.reduce_scatter(outs[0], ins, op=OPS[name])
            close(outs[0], full[4 * r:4 * r + 4])
    # unequal pieces: rank i gets i+1 elements
    sizes = [i + 1 for i in range(p)]
    total = sum(sizes)
    full = reference("SUM", p, total, torch.float32)
    out = torch.empty(r + 1)
    dist.reduce_scatter(out, list(value(r, total, torch.float32).split(sizes)))
    start = sum(sizes[:r])
    close(out, full[start:start + r + 1])
    # into a non-contiguous output, from a 2-D input
    out = torch.zeros(3, 4)[:, 1]
    dist.reduce_scatter_tensor(out, value(r, 3 * p, torch.float64).float().reshape(p, 3))
    close(out, reference("SUM", p, 3 * p, torch.float32)[3 * r:3 * r + 3])


def check_gathers(r: int, p: int) -> None:
    for dtype in (torch.float32, torch.bool, torch.bfloat16, torch.complex128, torch.uint8):
        outs = [torch.empty(3, dtype=dtype) for _ in range(p)]
        dist.all_gather(outs, value(r, 3, dtype))
        for i in range(p):
            close(outs[i], value(i, 3, dtype))
        big = torch.empty(3 * p, dtype=dtype)
        dist.all_gather_into_tensor(big, value(r, 3, dtype))
        close(big, torch.cat([value(i, 3, dtype) for i in range(p)]))
    # unequal sizes and shapes
    outs = [torch.empty(i + 1, 2) for i in range(p)]
    dist.all_gather(outs, value(r, 2 * (r + 1), torch.float32).reshape(r + 1, 2))
    for i in range(p):
        close(outs[i], value(i, 2 * (i + 1), torch.float32).reshape(i + 1, 2))
    # into a non-contiguous output tensor and as a stacked 2-D output
    holder = torch.zeros(3 * p, 2)
    dist.all_gather_into_tensor(holder[:, 0], value(r, 3, torch.float32))
    close(holder[:, 0], torch.cat([value(i, 3, torch.float32) for i in range(p)]))
    stacked = torch.empty(p, 5)
    dist.all_gather_into_tensor(stacked, value(r, 5, torch.float32))
    close(stacked, torch.stack([value(i, 5, torch.float32) for i in range(p)]))
    # coalesced
    outs2 = [[torch.empty(2) for _ in range(p)], [torch.empty(1) for _ in range(p)]]
    dist.all_gather_coalesced(outs2, [value(r, 2, torch.float32), value(r, 1, torch.float32)])
    for i in range(p):
        close(outs2[0][i], value(i, 2, torch.float32))
        close(outs2[1][i], value(i, 1, torch.float32))
    # gather / scatter / broadcast / reduce, every root
    for root in range(p):
        gl = [torch.empty(4) for _ in range(p)] if r == root else None
        dist.gather(value(r, 4, torch.float32), gl, dst=root)
        if r == root:
            for i in range(p):
                close(gl[i], value(i, 4, torch.float32))
        out = torch.empty(2, 3)
        sl = [torch.full((2, 3), float(i * 10 + root)) for i in range(p)] if r == root else None
        dist.scatter(out, sl, src=root)
        close(out, torch.full((2, 3), float(r * 10 + root)))
        bt = torch.arange(12.0).reshape(3, 4).t() * (r + 1)  # non-contiguous
        dist.broadcast(bt, src=root)
        close(bt, torch.arange(12.0).reshape(3, 4).t() * (root + 1))
        rt = value(r, 6, torch.int32)
        dist.reduce(rt, dst=root, op=R.MAX)
        close(rt, reference("MAX", p, 6, torch.int32) if r == root else value(r, 6, torch.int32))
    big = torch.full((300000,), float(r))  # broadcast past the inline size, queued
    dist.broadcast(big, src=p - 1)
    assert bool((big == p - 1).all())


def check_all_to_all(r: int, p: int) -> None:
    # equal blocks
    inp = torch.arange(p * 2, dtype=torch.float32) + 100 * r
    out = torch.empty(p * 2)
    dist.all_to_all_single(out, inp)
    close(out, torch.cat([torch.arange(2 * r, 2 * r + 2, dtype=torch.float32) + 100 * i
                          for i in range(p)]))
    # splits: rank i sends (i + j + 1) rows of 3 to rank j
    sends = [r + j + 1 for j in range(p)]
    recvs = [i + r + 1 for i in range(p)]
    rows = [torch.full((sends[j], 3), float(10 * r + j)) for j in range(p)]
    out = torch.empty(sum(recvs), 3)
    dist.all_to_all_single(out, torch.cat(rows), output_split_sizes=recvs,
                           input_split_sizes=sends)
    close(out, torch.cat([torch.full((recvs[i], 3), float(10 * i + r)) for i in range(p)]))
    # list form with unequal tensors
    ins = [torch.full((r + j + 1,), float(10 * r + j), dtype=torch.float64) for j in range(p)]
    outs = [torch.empty(i + r + 1, dtype=torch.float64) for i in range(p)]
    dist.all_to_all(outs, ins)
    for i in range(p):
        close(outs[i], torch.full((i + r + 1,), float(10 * i + r), dtype=torch.float64))


def check_p2p(r: int, p: int) -> None:
    right, left = (r + 1) % p, (r - 1) % p
    t = torch.full((5,), float(r))
    got = torch.empty(5)
    # sends first, then receives
    reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, t, right),
                                   dist.P2POp(dist.irecv, got, left)])
    for q in reqs:
        q.wait()
    close(got, torch.full((5,), float(left)))
    # receives first on every rank, then sends, a large one too (its own lanes, as under gloo)
    for n in (5, 1 << 20):
        got = torch.empty(n)
        w = dist.irecv(got, left)
        s = dist.isend(torch.full((n,), float(r)), right)
        w.wait()
        s.wait()
        close(got, torch.full((n,), float(left)))
    # tags, in order; a bfloat16 message into a tensor of another shape
    s1 = dist.isend(torch.full((2, 2), float(r), dtype=torch.bfloat16), right, tag=7)
    s2 = dist.isend(torch.tensor([r * 1.0]), right, tag=8)
    into = torch.empty(4, dtype=torch.bfloat16)
    w = dist.irecv(into, left, tag=7)
    dist.recv(torch.empty(1), left, tag=8)
    w.wait()
    s1.wait()
    s2.wait()
    close(into, torch.full((4,), float(left), dtype=torch.bfloat16))
    expect_error(lambda: dist.recv(torch.empty(1)), dist.DistBackendError,
                 "any source is not supported")
    # async work: the future's value is the list of outputs
    big = torch.ones(100000) * r
    work = dist.all_reduce(big, async_op=True)
    fut = work.get_future()
    assert fut.wait()[0] is big
    assert work.wait() and work.is_completed() and work.is_success()
    close(big, torch.ones(100000) * sum(range(p)))
    dist.barrier()
    ringcomm.torch.monitored_barrier(timeout=datetime.timedelta(seconds=20))


def check_groups(r: int, p: int) -> None:
    # a group of the last ranks in reverse order, one of every rank, one of ranks 0 and p-1
    members = list(range(p - 1, 0, -1)) if p > 2 else [1, 0]
    g = dist.new_group(members)
    if r in members:
        t = torch.tensor([float(r)])
        dist.all_reduce(t, group=g)
        assert t.item() == sum(members)
        assert dist.get_rank(g) == sorted(members).index(r)  # torch orders a group by rank
        b = torch.tensor([float(r)])
        dist.broadcast(b, src=members[0], group=g)
        assert b.item() == members[0]
    everyone = dist.new_group(list(range(p)))
    t = torch.tensor([1])
    dist.all_reduce(t, group=everyone)
    assert t.item() == p
    ends = dist.new_group([0, p - 1])
    if r in (0, p - 1):
        outs = [torch.empty(1) for _ in range(2)]
        dist.all_gather(outs, torch.tensor([float(r)]), group=ends)
        assert [o.item() for o in outs] == [0.0, float(p - 1)]
    # torch's split_group needs an accelerator or torchcomms: refused before any backend
    expect_error(lambda: dist.split_group(split_ranks=[list(range(p))]), RuntimeError, "split")


def case_semantics() -> None:
    """Every op of torch's ProcessGroup on CPU tensors against a one-process reference."""
    r, p = init()
    assert dist.get_backend() == "ringcomm"
    check_reductions(r, p)
    check_reduce_scatter(r, p)
    check_gathers(r, p)
    check_all_to_all(r, p)
    check_p2p(r, p)
    check_groups(r, p)
    expect_error(lambda: dist.all_reduce(torch.ones(2).to("meta")), ValueError,
                 "must be on the CPU")
    dist.destroy_process_group()
    print(f"ok semantics rank {r}", flush=True)


def case_mismatch() -> None:
    """Ranks that call all_reduce with different shapes all raise DistBackendError."""
    r, p = init()
    t = torch.ones(3 if r == 0 else 4)
    start = time.monotonic()
    e = expect_error(lambda: dist.all_reduce(t), dist.DistBackendError, "MismatchError")
    assert isinstance(e.__cause__, ringcomm.MismatchError), repr(e.__cause__)
    assert "shapes differ" in str(e), str(e)
    assert time.monotonic() - start < 10
    print(f"ok mismatch rank {r}", flush=True)
    os._exit(0)  # the job is aborted: skip torch's teardown


def case_killed() -> None:
    """A rank killed mid-job: the others' next call raises DistBackendError within the timeout."""
    dist.init_process_group("ringcomm", timeout=datetime.timedelta(seconds=8))
    r, p = dist.get_rank(), dist.get_world_size()
    t = torch.ones(4)
    dist.all_reduce(t)
    if r == p - 1:
        os._exit(17)
    start = time.monotonic()
    e = expect_error(lambda: [dist.all_reduce(torch.ones(4)) for _ in range(1000)],
                     dist.DistBackendError, "ringcomm all_reduce")
    took = time.monotonic() - start
    assert took < 8 + 3, took
    assert isinstance(e.__cause__, ringcomm.PeerError), repr(e.__cause__)
    print(f"ok killed rank {r} after {took:.1f} s: {str(e)[:160]}", flush=True)
    os._exit(0)


def case_hello() -> None:
    """init_process_group as the program passes it (env://, tcp://, file://): a sum and a gather."""
    if len(sys.argv) > 2:  # init_method rank size
        dist.init_process_group("ringcomm", init_method=sys.argv[2], rank=int(sys.argv[3]),
                                world_size=int(sys.argv[4]))
    else:
        dist.init_process_group("ringcomm")
    r, p = dist.get_rank(), dist.get_world_size()
    t = torch.tensor([float(r)])
    dist.all_reduce(t)
    outs = [torch.empty(1) for _ in range(p)]
    dist.all_gather(outs, torch.tensor([r * 2.0]))
    assert t.item() == sum(range(p)) and [o.item() for o in outs] == [2.0 * i for i in range(p)]
    dist.destroy_process_group()
    print(f"ok hello rank {r}", flush=True)


if __name__ == "__main__":
    globals()[f"case_{sys.argv[1]}"]()
