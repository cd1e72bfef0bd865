"""Train a PyTorch MLP on scikit-learn's digits, data-parallel over every rank.

    pip install -e ".[examples,torch]"   # torch's CPU build: see pyproject.toml
    python examples/train_torch.py
    ringcomm launch -n 4 examples/train_torch.py

The torch version of train_digits.py: a torch model and optimizer, each rank
on its slice of every global batch, and every parameter's `.grad` averaged
over the ranks with one `ringcomm.average_gradients` call before
`optimizer.step()`; or, with `--overlap`, by a `ringcomm.GradientReducer` whose
hooks start averaging each bucket of gradients while backward computes the rest.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits

try:
    import torch
except ImportError:
    raise SystemExit(
        "train_torch.py needs PyTorch: pip install -e \".[examples,torch]\" (on a machine "
        "without a GPU the CPU build is far smaller: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)"
    ) from None

import ringcomm


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=96, help="global batch, split among ranks")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overlap", action="store_true",
                   help="average gradients during backward (ringcomm.GradientReducer hooks) "
                        "instead of one average_gradients call after it")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # ranks share the machine's cores
    world = ringcomm.init()
    rank, size = world.rank(), world.size()
    if args.batch_size % size:
        raise SystemExit(f"--batch-size {args.batch_size} must divide evenly among {size} ranks")
    local = args.batch_size // size

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(args.seed).permutation(len(x))
    x = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[order])
    n_test = len(x) // 5
    x_test, y_test, x_train, y_train = x[:n_test], y[:n_test], x[n_test:], y[n_test:]

    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    for p in model.parameters():  # start every rank from rank 0's weights
        p.data.copy_(ringcomm.broadcast(p.data, 0))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # With --overlap, hooks on every parameter start each bucket's all_sum during backward.
    reducer = ringcomm.GradientReducer(model.parameters()) if args.overlap else None
    loss_fn = torch.nn.CrossEntropyLoss()

    steps = len(x_train) // args.batch_size
    gen = torch.Generator().manual_seed(args.seed + 2)
    ranks = f"{size} rank{'s' if size > 1 else ''}"
    if rank == 0:
        print(f"torch digits: {ranks} ({world.backend}), global batch "
              f"{args.batch_size} ({local} per rank), {args.epochs} epochs", flush=True)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=gen)
        stats = np.zeros(3)
        for s in range(steps):
            mine = perm[s * args.batch_size:(s + 1) * args.batch_size][rank * local:(rank + 1) * local]
            opt.zero_grad()
            out = model(x_train[mine])
            loss = loss_fn(out, y_train[mine])
            loss.backward()
            if reducer is not None:
                reducer.wait()  # the averaged gradients are in p.grad
            else:
                params = [p for p in model.parameters() if p.grad is not None]
                for p, g in zip(params, ringcomm.average_gradients([p.grad for p in params])):
                    p.grad = g
            opt.step()
            stats += (loss.item() * len(mine), (out.argmax(1) == y_train[mine]).sum().item(), len(mine))
        total = ringcomm.all_sum(stats)
        if rank == 0:
            rate = total[2] / (time.perf_counter() - t0)
            print(f"epoch {epoch:3d}/{args.epochs}  loss {total[0] / total[2]:.4f}  "
                  f"acc {total[1] / total[2]:.3f}  {rate:7.0f} samples/s  {ranks}", flush=True)

    with torch.no_grad():
        share = np.array_split(np.arange(n_test), size)[rank]
        hits = (model(x_test[share]).argmax(1) == y_test[share]).sum().item()
    counts = ringcomm.all_sum(np.array([hits, len(share)]))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    spread = ringcomm.all_max(flat) - ringcomm.all_min(flat)
    if rank == 0:
        print(f"test accuracy {counts[0] / counts[1]:.4f} ({counts[0]}/{counts[1]}); "
              f"largest weight difference between ranks {spread.abs().max().item():.3g}", flush=True)


if __name__ == "__main__":
    main()
