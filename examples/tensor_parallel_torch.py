"""A tensor-parallel torch MLP over ringcomm's differentiable collectives.

    ringcomm launch -n 2 examples/tensor_parallel_torch.py     # 2 to 4 ranks (any that
    ringcomm launch -n 4 examples/tensor_parallel_torch.py     # divides --hidden)

The MLP is y = relu(x @ W1 + b1) @ W2 + b2. Its first layer is split by columns (rank r holds
W1[:, cols_r] and b1[cols_r], and computes its slice of the hidden layer without any
communication); its second layer by rows (rank r holds W2[cols_r, :] and multiplies its hidden
slice by it); one `ringcomm.all_sum` adds the ranks' partial outputs. That all_sum is
differentiable: backward sums the output's gradient over the ranks (torch's rule), so the
gradient reaching each rank's shard is the unsharded model's.

torch's rule differentiates the sum of every rank's loss. Every rank computes the same loss
from the replicated output, so each rank back-propagates loss / size. Rank 0 also trains the
unsharded model from the same initial weights and prints both loss curves side by side.
"""

from __future__ import annotations

import argparse

try:
    import torch
except ImportError:
    raise SystemExit("tensor_parallel_torch.py needs PyTorch: pip install torch --index-url "
                     "https://download.pytorch.org/whl/cpu") from None

import ringcomm


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--hidden", type=int, default=48, help="hidden width, split among ranks")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    if args.hidden % size:
        raise SystemExit(f"--hidden {args.hidden} does not split among {size} ranks; "
                         "pass a multiple of the number of ranks")
    torch.manual_seed(args.seed)  # every rank draws the same data and the same full weights
    d_in, d_out, n = 16, 4, 256
    x = torch.randn(n, d_in, dtype=torch.float64)
    teacher = torch.randn(d_in, d_out, dtype=torch.float64)
    target = torch.tanh(x @ teacher)
    full = {
        "w1": torch.randn(d_in, args.hidden, dtype=torch.float64) / d_in ** 0.5,
        "b1": torch.zeros(args.hidden, dtype=torch.float64),
        "w2": torch.randn(args.hidden, d_out, dtype=torch.float64) / args.hidden ** 0.5,
        "b2": torch.zeros(d_out, dtype=torch.float64),
    }
    cols = slice(rank * args.hidden // size, (rank + 1) * args.hidden // size)
    shard = {
        "w1": full["w1"][:, cols].clone().requires_grad_(),
        "b1": full["b1"][cols].clone().requires_grad_(),
        "w2": full["w2"][cols].clone().requires_grad_(),
        "b2": full["b2"].clone().requires_grad_(),  # added once, by rank 0, inside the sum
    }
    sharded_opt = torch.optim.SGD(shard.values(), lr=args.lr)
    reference = {k: v.clone().requires_grad_() for k, v in full.items()}
    reference_opt = torch.optim.SGD(reference.values(), lr=args.lr)

    def sharded_forward() -> torch.Tensor:
        hidden = torch.relu(x @ shard["w1"] + shard["b1"])      # column-parallel: no call
        partial = hidden @ shard["w2"]                           # row-parallel: a partial sum
        if rank == 0:
            partial = partial + shard["b2"]
        return ringcomm.all_sum(partial)                         # backward: all_sum of grads

    def loss_of(y: torch.Tensor) -> torch.Tensor:
        return ((y - target) ** 2).mean()

    if rank == 0:
        print(f"tensor-parallel MLP over {size} ranks: hidden {args.hidden} = "
              f"{size} x {args.hidden // size} columns")
        print(f"{'step':>4}  {'sharded loss':>14}  {'unsharded loss':>14}")
    worst = 0.0
    for step in range(args.steps):
        loss = loss_of(sharded_forward())
        sharded_opt.zero_grad()
        (loss / size).backward()  # every rank's loss counts: together they are the loss
        sharded_opt.step()
        if rank == 0:
            ref = loss_of(torch.relu(x @ reference["w1"] + reference["b1"]) @ reference["w2"]
                          + reference["b2"])
            reference_opt.zero_grad()
            ref.backward()
            reference_opt.step()
            worst = max(worst, abs(loss.item() - ref.item()))
            if step % 5 == 0 or step == args.steps - 1:
                print(f"{step:>4}  {loss.item():>14.8f}  {ref.item():>14.8f}")
    if rank == 0:
        print(f"largest difference between the curves: {worst:.2e}")
        if worst > 1e-9:
            raise SystemExit("the sharded model's loss left the unsharded model's")


if __name__ == "__main__":
    main()
