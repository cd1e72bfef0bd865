"""The decode step (100 all_reduces of 16 KiB, one of 4 B) of torch.distributed with gloo."""

import _common
import torch
import torch.distributed as dist

dist.init_process_group("gloo")


def make(count):
    x = torch.ones(count, dtype=torch.float32)

    def call():
        dist.all_reduce(x)

    # In place: refilled with ones (untimed) before the result is checked.
    return call, lambda: x[0].item(), lambda: x.fill_(1)


_common.decode("gloo", dist.get_rank(), dist.get_world_size(), make)
dist.destroy_process_group()
