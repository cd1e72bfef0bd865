"""All-sum over the job and print 'ok RANK SIZE HOST' when the result is right."""

import socket

import numpy as np

import ringcomm

world = ringcomm.init(strict=True)
rank, size = world.rank(), world.size()
x = ringcomm.all_sum(np.full(1000, rank + 1, dtype=np.float32))
expected = size * (size + 1) / 2
assert np.all(x == expected), (x[:4], expected)
print(f"ok {rank} {size} {socket.gethostname()}", flush=True)
