"""In-rank case: DDP and FSDP2 training on the ringcomm backend against the same on gloo.

``ringcomm launch -n N tests/ranks/torch_backend_training.py train [fsdp]``: ringcomm is the
default group and gloo a group of every rank beside it, in one process (no teardown of
either between the runs). A small model trains with DDP on each (and with FSDP2's
fully_shard on each when `fsdp` is given: importing FSDP alone takes seconds); every rank
must hold the same weights, and ringcomm's must equal gloo's to float tolerance. Ends with
``ok train rank R``.
"""

from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import ringcomm.torch  # noqa: F401 - registers the backend

STEPS = 6


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 4))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)


def train(wrap: str, group: dist.ProcessGroup) -> list[torch.Tensor]:
    rank = dist.get_rank()
    net = model()
    if wrap == "ddp":
        # a small bucket: several buckets, so the overlap with backward is exercised
        wrapped: nn.Module = nn.parallel.DistributedDataParallel(
            net, bucket_cap_mb=0.01, process_group=group)
    else:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        mesh = DeviceMesh.from_group(group, "cpu")
        for layer in net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(net, mesh=mesh)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        x, y = batch(rank, step)
        opt.zero_grad()
        nn.functional.mse_loss(wrapped(x), y).backward()
        opt.step()
    if wrap == "ddp":
        return [p.detach().clone() for p in net.parameters()]
    return [p.full_tensor().detach().clone() for p in wrapped.parameters()]


def identical_everywhere(weights: list[torch.Tensor]) -> None:
    """Every rank holds the same bits."""
    flat = torch.cat([w.reshape(-1) for w in weights])
    every = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    for r, other in enumerate(every):
        assert torch.equal(other, flat), f"rank {r}'s weights differ from this rank's"


def case_train() -> None:
    dist.init_process_group("ringcomm", timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    ours = dist.distributed_c10d._get_default_group()
    gloo = dist.new_group(backend="gloo")
    assert dist.get_backend(ours) == "ringcomm" and dist.get_backend(gloo) == "gloo"
    for wrap in ("ddp", "fsdp") if "fsdp" in sys.argv[2:] else ("ddp",):
        mine = train(wrap, ours)
        theirs = train(wrap, gloo)
        identical_everywhere(mine)
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    dist.barrier()
    print(f"ok train rank {rank}", flush=True)
    # torch's gloo teardown can deadlock on the GIL (its run-loop thread decrefs a Python
    # object while the main thread waits for it): leave without it.
    os._exit(0)


if __name__ == "__main__":
    globals()[f"case_{sys.argv[1]}"]()
