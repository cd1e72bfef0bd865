"""Tensor-parallel training of an MLP with MLX's own sharded layers, on ringcomm.

    ringcomm launch -n 2 examples/tensor_parallel.py      # 2, 3 or 4 ranks

The MLP's first layer is split by its output features (column parallel, "all-to-sharded") and
its second by its input features (row parallel, "sharded-to-all"), with
mlx.nn.layers.distributed.shard_linear, unchanged: ringcomm.mlx.install() routes the
mx.distributed calls those layers make to ringcomm. Every rank holds 1/N of each weight; one
all_sum per step goes forward (after the row-parallel layer) and one back (into the input's
gradient of the column-parallel layer). Rank 0 also trains the unsharded MLP on the same data
and prints both loss curves, which agree to float tolerance.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

import ringcomm.mlx

ringcomm.mlx.install()  # before anything looks up mx.distributed

from mlx.nn.layers.distributed import shard_linear  # noqa: E402

world = mx.distributed.init()
rank, size = world.rank(), world.size()
D, H, STEPS = 16, 96, 20  # H (the hidden width) is split among the ranks: 2, 3 or 4


class MLP(nn.Module):
    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first, self.second = first, second

    def __call__(self, x: mx.array) -> mx.array:
        return self.second(nn.gelu(self.first(x)))


def train(model: nn.Module, data: list[tuple[mx.array, mx.array]]) -> list[float]:
    optimizer = optim.SGD(learning_rate=0.05)

    def loss_fn(m: nn.Module, x: mx.array, y: mx.array) -> mx.array:
        return nn.losses.mse_loss(m(x), y)

    step = nn.value_and_grad(model, loss_fn)
    losses = []
    for x, y in data:
        loss, grads = step(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
        losses.append(loss.item())
    return losses


mx.random.seed(0)  # the same full weights and data on every rank
full = MLP(nn.Linear(D, H), nn.Linear(H, D))
mx.eval(full.parameters())
sharded = MLP(shard_linear(full.first, "all-to-sharded"),
              shard_linear(full.second, "sharded-to-all"))
teacher = nn.Linear(D, D)
data = []
for _ in range(STEPS):
    x = mx.random.normal((32, D))
    data.append((x, mx.tanh(teacher(x))))

tp_losses = train(sharded, data)  # shard_linear copied the weights: `full` is untouched
if rank == 0:
    ref_losses = train(full, data)
    print(f"{'step':>4} {'tensor-parallel (p=' + str(size) + ')':>26} {'unsharded':>12}")
    for i, (a, b) in enumerate(zip(tp_losses, ref_losses)):
        print(f"{i:>4} {a:>26.6f} {b:>12.6f}")
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(tp_losses, ref_losses))
    assert worst < 1e-4, f"the loss curves differ: worst relative gap {worst:.2e}"
    print(f"the same loss curve on {size} ranks as unsharded (worst relative gap {worst:.1e})")
