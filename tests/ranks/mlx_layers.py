"""MLX's distributed layers and utilities, unchanged, on whichever mx.distributed runs them.

    python mlx_layers.py mlx DIR        # MLX's own ring backend (MLX_RANK, MLX_HOSTFILE)
    python mlx_layers.py ringcomm DIR   # the same program after ringcomm.mlx.install()

Each rank writes DIR/rank<R>.json: the results and gradients of every case, which
tests/test_mlx_dropin.py compares between the two runs; then prints ``ok mlx_layers rank R``.
"""

from __future__ import annotations

import json
import os
import sys

import mlx.core as mx
import mlx.nn as nn
import numpy as np

if sys.argv[1] == "ringcomm":
    import ringcomm.mlx

    ringcomm.mlx.install()

from mlx.nn.layers.distributed import fully_shard, shard_inplace, shard_linear
from mlx.nn.utils import average_gradients, clip_grad_norm_sharded
from mlx.utils import tree_flatten

world = mx.distributed.init(strict=True, backend="ring")
r, p = world.rank(), world.size()
out: dict[str, list] = {}


def keep(name: str, *arrays: object) -> None:
    for i, a in enumerate(arrays):
        for path, leaf in tree_flatten(a) if not isinstance(a, mx.array) else [("", a)]:
            out[f"{name}.{i}{path}"] = np.array(leaf.astype(mx.float32)).ravel().tolist()


mx.random.seed(0xF0F0F0F0)
part = slice(r * 256 // p, (r + 1) * 256 // p)
x = mx.random.normal((4, 256))
lin = nn.Linear(256, 64)
keep("shard_linear", shard_linear(lin, "all-to-sharded")(x),
     shard_linear(lin, "sharded-to-all")(x[:, part]))
qlin = lin.to_quantized()
keep("quantized", shard_linear(qlin, "all-to-sharded")(x),
     shard_linear(qlin, "sharded-to-all")(x[:, part]))

# Column-then-row pairs, trained by gradients (MLX's own test, smaller).
mod = nn.Sequential(*[nn.Linear(32, 32) for _ in range(4)])
smod = nn.Sequential(*[shard_linear(m, "all-to-sharded" if i % 2 == 0 else "sharded-to-all")
                       for i, m in enumerate(mod.layers)])
xi, yi = mx.random.normal((4, 32)), mx.random.normal((4, 32))
loss, grads = nn.value_and_grad(smod, lambda m, a, b: (m(a) * b).sum())(smod, xi, yi)
keep("sharded_mlp", loss, grads)
# and the input's gradient: AllToSharded sums it over the group in the backward pass
keep("input_grad", mx.grad(lambda a: (smod(a) * yi).sum())(xi))

# shard_inplace with a predicate, a conv stack that sums after every other layer
conv = nn.Conv2d(3, 8, kernel_size=3)
shard_inplace(conv, lambda path, w: 0)
keep("shard_inplace", mx.distributed.all_gather(conv(mx.random.normal((2, 6, 6, 3)))))

# fully_shard: parameters gathered in the forward, gradients reduce-scattered in the backward.
# MLX's ring has no sum_scatter, so only the drop-in runs it, checked here against the
# unsharded module: each shard's gradient is its rows of the gradient averaged over ranks.
if sys.argv[1] == "ringcomm" and hasattr(nn.layers.distributed, "fully_shard"):
    def mlp() -> nn.Module:
        mx.random.seed(5)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    def fs_loss(m: nn.Module, a: mx.array) -> mx.array:
        return (m(a) ** 2).mean()

    xf = mx.random.normal((3, 8), key=mx.random.key(9))
    fmod, full = fully_shard(mlp()), mlp()
    loss, grads = nn.value_and_grad(fmod, fs_loss)(fmod, xf + r)
    want = [nn.value_and_grad(full, fs_loss)(full, xf + q) for q in range(p)]
    assert np.allclose(np.array(loss), np.array(want[r][0]), rtol=1e-5, atol=1e-6)
    for path, g in tree_flatten(grads):
        rows = g.shape[0]
        avg = sum(dict(tree_flatten(w[1]))[path.removeprefix("module.")] for w in want) / p
        assert np.allclose(np.array(g), np.array(avg[r * rows:(r + 1) * rows]),
                           rtol=1e-4, atol=1e-6), path
    print(f"fully_shard ok {r}", flush=True)

# average_gradients in one bucket, two, and one call per array
grads = {"a": mx.ones((10,)) * (r + 1), "b": [mx.arange(7).astype(mx.float32) * r]}
for size in (32 * 1024 ** 2, 4 * 5, 0):
    keep(f"average_gradients{size}", average_gradients(grads, all_reduce_size=size))
keep("clip_grad_norm_sharded", *clip_grad_norm_sharded({"g": mx.ones((4, 3)) * (r + 1)}, 1.0))

# The collectives' own rules: all_max/all_min pass the cotangent; all_gather takes this rank's
# rows; all_sum's jvp sums the tangents; send and recv_like around a ring; dtypes.
xr = mx.arange(6).astype(mx.float32) * (r + 1) - 2 * r
keep("all_max_grad", mx.grad(lambda a: (mx.distributed.all_max(a) ** 2).sum())(xr))
keep("all_min_grad", mx.grad(lambda a: (mx.distributed.all_min(a) ** 2).sum())(xr))
keep("all_gather_vjp", mx.grad(lambda a: mx.distributed.all_gather(a)[0])(mx.array(1.0)))
keep("all_sum_jvp", *mx.jvp(lambda a: mx.distributed.all_sum(a * a), [xr], [xr + 1]))
for dt in (mx.int8, mx.uint16, mx.int32, mx.float16, mx.bfloat16, mx.float32):
    xd = (xr * 3).astype(dt)
    keep(f"reduce_{dt}", mx.distributed.all_sum(xd), mx.distributed.all_max(xd),
         mx.distributed.all_min(xd), mx.distributed.all_gather(xd))
    if sys.argv[1] == "ringcomm":  # MLX's ring has no sum_scatter
        y = mx.distributed.sum_scatter(mx.concatenate([xd] * p))
        assert mx.array_equal(y, mx.distributed.all_sum(xd)), y
right, left = (r + 1) % p, (r - 1) % p
if r % 2 == 0:
    sent = mx.distributed.send(xr, right)
    got = mx.distributed.recv_like(xr, left)
else:
    got = mx.distributed.recv(xr.shape, xr.dtype, left)
    sent = mx.distributed.send(xr, right)
mx.eval(*((sent, got) if r % 2 == 0 else (got, sent)))
keep("send_recv", sent, got)
with open(os.path.join(sys.argv[2], f"rank{r}.json"), "w") as file:
    json.dump(out, file)
print(f"ok mlx_layers rank {r}", flush=True)
