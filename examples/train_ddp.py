"""Train a PyTorch MLP with DistributedDataParallel on ringcomm's torch backend, or on gloo.

    ringcomm launch -n 4 examples/train_ddp.py                   # ringcomm's own launcher
    torchrun --nproc-per-node 4 examples/train_ddp.py            # torch's
    torchrun --nproc-per-node 4 examples/train_ddp.py --backend gloo

The same script, unchanged, for either backend and either launcher: `import ringcomm.torch`
registers the "ringcomm" backend, and `init_process_group` reads the ranks from whichever
launcher started the job. Each rank trains on its slice of every global batch of a synthetic
regression task; DDP averages the gradients while backward runs. At the end every rank holds
the same weights, and rank 0 prints the loss and a checksum of them (the same, to float
tolerance, for both backends).
"""

from __future__ import annotations

import argparse
import time

try:
    import torch
except ImportError:
    raise SystemExit("train_ddp.py needs PyTorch: pip install torch (the CPU build: pip install "
                     "torch --index-url https://download.pytorch.org/whl/cpu)") from None
import torch.distributed as dist
from torch import nn

import ringcomm.torch  # noqa: F401 - registers the "ringcomm" backend


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="ringcomm", choices=["ringcomm", "gloo"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=256, help="global batch, split among ranks")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def data(step: int, rank: int, size: int, batch: int, seed: int) -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """This rank's slice of global batch `step` of y = sin(x @ w) for a fixed random w."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(batch, 32, generator=g)
    w = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))
    y = torch.sin(x @ w)
    per = batch // size
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # ranks share the machine's cores
    dist.init_process_group(args.backend)
    rank, size = dist.get_rank(), dist.get_world_size()
    if args.batch_size % size:
        raise SystemExit(f"--batch-size {args.batch_size} does not divide among {size} ranks")
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 4))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    start = time.perf_counter()
    for step in range(args.steps):
        x, y = data(step, rank, size, args.batch_size, args.seed)
        opt.zero_grad()
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.5f}", flush=True)
    seconds = time.perf_counter() - start
    total = torch.tensor([loss.item()])
    dist.all_reduce(total, op=dist.ReduceOp.AVG)
    checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
    if rank == 0:
        print(f"{args.backend}: {size} ranks, {args.steps} steps in {seconds:.2f} s "
              f"({args.steps / seconds:.1f} steps/s); mean final loss {total.item():.5f}; "
              f"weights checksum {checksum:.6f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
