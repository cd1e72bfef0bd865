"""all_sum of MLX's own distributed layer, started by `mlx.launch` (ring backend)."""

import _common
import mlx.core as mx

world = mx.distributed.init(strict=True, backend="ring")


def make(count):
    x = mx.ones((count,), dtype=mx.float32)
    mx.eval(x)
    out = [x]

    def call():
        out[0] = mx.distributed.all_sum(x)
        mx.eval(out[0])
    return call, lambda: out[0][0].item(), None


def barrier():
    mx.eval(mx.distributed.all_sum(mx.zeros((1,))))


_common.run("mlx", world.rank(), world.size(), make, barrier)
