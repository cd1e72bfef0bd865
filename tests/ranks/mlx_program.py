"""A plain MLX program: MLX's own ring backend, started by whichever launcher runs it."""

import mlx.core as mx

group = mx.distributed.init(strict=True, backend="ring")
x = mx.distributed.all_sum(mx.ones(10) * (group.rank() + 1))
mx.eval(x)
print(f"mlx rank {group.rank()}/{group.size()}: {x.tolist()[0]:g}", flush=True)
