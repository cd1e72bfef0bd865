"""In-rank check of the torch backend across hosts: a few ops and DDP against one-process results.

Run on every rank of a job spread over hosts (torch's variables set by hand, torchrun, or
``ringcomm launch --hosts``). Every rank asserts, then prints
``ok hosts rank R of P host H path PATH`` (PATH: the way ringcomm's last all_reduce took).
"""

from __future__ import annotations

import datetime
import socket

import torch
import torch.distributed as dist
from torch import nn

import ringcomm
import ringcomm.torch  # registers the backend

R = dist.ReduceOp


def check_reductions(r: int, p: int) -> None:
    ranks = torch.arange(p, dtype=torch.float64)
    for n in (5, 1 << 20):  # the latency path and a pipelined one (4 MiB of float32)
        base = torch.arange(n, dtype=torch.float64) % 7
        everyone = base[None, :] + ranks[:, None]  # rank i's contribution in row i
        for name, op, want in (("SUM", R.SUM, everyone.sum(0)), ("AVG", R.AVG, everyone.mean(0)),
                               ("MAX", R.MAX, everyone.max(0).values)):
            t = (base + r).to(torch.float32)
            dist.all_reduce(t, op=op)
            assert torch.equal(t, want.to(torch.float32)), (name, n, t[:4], want[:4])
    t = torch.tensor([r + 1, -r], dtype=torch.int64)
    dist.all_reduce(t, op=R.MAX)
    assert t.tolist() == [p, 0], t


def check_gathers(r: int, p: int) -> None:
    outs = [torch.empty(i + 1) for i in range(p)]  # unequal sizes: rank i gives i + 1 elements
    dist.all_gather(outs, torch.full((r + 1,), float(r)))
    assert all(torch.equal(o, torch.full((i + 1,), float(i))) for i, o in enumerate(outs)), outs
    # all_to_all_single with splits: rank i sends i + j + 1 elements of value 100 i + j to rank j
    send = [i + r + 1 for i in range(p)]
    x = torch.cat([torch.full((r + j + 1,), 100.0 * r + j) for j in range(p)])
    y = torch.empty(sum(send))
    dist.all_to_all_single(y, x, output_split_sizes=send, input_split_sizes=send)
    want = torch.cat([torch.full((j + r + 1,), 100.0 * j + r) for j in range(p)])
    assert torch.equal(y, want), (y, want)
    b = torch.arange(6, dtype=torch.float32) * (r + 1)
    dist.broadcast(b, src=p - 1)
    assert torch.equal(b, torch.arange(6, dtype=torch.float32) * p), b


def check_p2p(r: int, p: int) -> None:
    # every rank receives from its left neighbour and sends to its right one; recv posted first
    got = torch.empty(1000, dtype=torch.int64)
    recv = dist.irecv(got, src=(r - 1) % p)
    send = dist.isend(torch.arange(1000) + 10 * r, dst=(r + 1) % p)
    send.wait()
    recv.wait()
    assert torch.equal(got, torch.arange(1000) + 10 * ((r - 1) % p)), got[:3]
    if p > 1:  # blocking send/recv between the first and last rank, both ways
        if r == 0:
            dist.send(torch.tensor([7.0, 8.0]), dst=p - 1)
            back = torch.empty(3)
            dist.recv(back, src=p - 1)
            assert back.tolist() == [1.0, 2.0, 3.0], back
        elif r == p - 1:
            t = torch.empty(2)
            dist.recv(t, src=0)
            assert t.tolist() == [7.0, 8.0], t
            dist.send(torch.tensor([1.0, 2.0, 3.0]), dst=0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def check_ddp(r: int, p: int) -> None:
    """3 DDP steps: the weights equal one process's training on every rank's batch at once."""
    ddp = nn.parallel.DistributedDataParallel(_model())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        opt.zero_grad()
        x, y = _batch(r, step)
        nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
        ref_opt.zero_grad()
        xs, ys = zip(*(_batch(i, step) for i in range(p)))
        nn.functional.mse_loss(ref(torch.cat(xs)), torch.cat(ys)).backward()
        ref_opt.step()
    mine = torch.cat([q.detach().flatten() for q in ddp.module.parameters()])
    want = torch.cat([q.detach().flatten() for q in ref.parameters()])
    assert torch.allclose(mine, want, rtol=1e-5, atol=1e-6), (mine - want).abs().max()
    everyone = [torch.empty_like(mine) for _ in range(p)]
    dist.all_gather(everyone, mine)
    assert all(torch.equal(w, everyone[0]) for w in everyone), "ranks' weights differ"


def main() -> None:
    dist.init_process_group("ringcomm", timeout=datetime.timedelta(seconds=60))
    r, p = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "ringcomm"
    check_reductions(r, p)
    world = ringcomm.init()
    path = world._backend.path
    check_gathers(r, p)
    check_p2p(r, p)
    check_ddp(r, p)
    dist.barrier()
    dist.destroy_process_group()
    print(f"ok hosts rank {r} of {p} host {socket.gethostname()} path {path}", flush=True)


if __name__ == "__main__":
    main()
