"""all_reduce of torch.distributed with gloo, in place, started by `torchrun`."""

import _common
import torch
import torch.distributed as dist


def make(count):
    x = torch.ones(count, dtype=torch.float32)

    def call():
        dist.all_reduce(x)

    # all_reduce works in place: refill the ones (untimed) before every call.
    return call, lambda: x[0].item(), lambda: x.fill_(1)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    _common.run("gloo", dist.get_rank(), dist.get_world_size(), make, dist.barrier)
    dist.destroy_process_group()
