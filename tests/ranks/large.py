"""Messages over 2 GiB: all_sum, send/recv and broadcast of 2**31 + 1000 bytes, at size 2."""

import numpy as np

import ringcomm

world = ringcomm.init()
R = world.rank()
n = (1 << 31) + 1000
x = np.full(n, R + 1, dtype=np.uint8)
y = ringcomm.all_sum(x)
assert y.shape == (n,) and y[0] == 3 and y[-1] == 3 and y[n // 2] == 3 and (y[::4093] == 3).all()
del y
if R == 0:
    x[-1] = 42
    ringcomm.send(x, 1)
else:
    z = ringcomm.recv_like(x, 0)
    assert z[-1] == 42 and z[0] == 1 and z[n // 2] == 1
    del z
print(f"rank {R}: large ok", flush=True)
