"""A plain MLX program on MLX's own MPI backend, started by whichever launcher runs it (mpirun
through mlx.launch or `ringcomm launch --backend mpi`: both tell MLX where libmpi is)."""

import mlx.core as mx

group = mx.distributed.init(strict=True, backend="mpi")
r, n = group.rank(), group.size()
x = mx.distributed.all_sum(mx.ones(3) * (r + 1))
grad = mx.grad(lambda a: mx.distributed.all_sum(a).sum())(mx.ones(3))
print(f"mlx mpi rank {r}/{n}: {x.tolist()} grad {grad.tolist()}", flush=True)
