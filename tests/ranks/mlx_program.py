"""A plain MLX program: all_sum over MLX's own ring backend (MLX_RANK, MLX_HOSTFILE), started
by whichever launcher runs it. Prints ``mlx rank R/N: [values]``."""

import mlx.core as mx

group = mx.distributed.init(strict=True, backend="ring")
x = mx.distributed.all_sum(mx.ones(4) * (group.rank() + 1))
mx.eval(x)
print(f"mlx rank {group.rank()}/{group.size()}: {x.tolist()}", flush=True)
