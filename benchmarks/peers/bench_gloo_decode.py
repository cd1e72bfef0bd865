"""The decode step (100 all_reduces of 16 KiB, one of 4 B) of torch.distributed with gloo."""

import _common
import torch.distributed as dist
from bench_gloo import make

dist.init_process_group("gloo")
_common.decode("gloo", dist.get_rank(), dist.get_world_size(), make)
dist.destroy_process_group()
