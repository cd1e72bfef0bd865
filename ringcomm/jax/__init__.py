"""ringcomm's collectives for JAX: differentiable (grad, vjp, jvp) and usable inside jax.jit.

`ringcomm.all_sum(x)` on a JAX tracer (inside `jax.jit`, `jax.grad`, `jax.vjp`, `jax.jvp`)
comes to `ringcomm.jax.collectives` through ringcomm's frameworks hook; the functions here
are the same collectives called directly, plus `ppermute` and `pvary`. docs/frameworks.md
gives every rule.
"""

from .collectives import (
    all_gather,
    all_gather_v,
    all_max,
    all_min,
    all_reduce,
    all_sum,
    all_to_all,
    all_to_all_v,
    broadcast,
    ppermute,
    pvary,
    reduce_scatter,
    reduce_scatter_v,
    sum_scatter,
)

__all__ = [
    "all_gather", "all_gather_v", "all_max", "all_min", "all_reduce", "all_sum", "all_to_all",
    "all_to_all_v", "broadcast", "ppermute", "pvary", "reduce_scatter", "reduce_scatter_v",
    "sum_scatter",
]
