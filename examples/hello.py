"""Sum an array of ones over every rank: `ringcomm launch -n 4 examples/hello.py`."""

import numpy as np

import ringcomm

world = ringcomm.init()
x = ringcomm.all_sum(np.ones(10))
print(world.rank(), x)
