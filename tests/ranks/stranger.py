"""Two ranks under torch's variables, no RINGCOMM_TOKEN: rank 1 sends rank 0 an object.

Rank 0 writes its ring listener's address to $STRANGER_DIR/address once it is up, and rank 1
waits for $STRANGER_DIR/go before it sends, so a stranger (the test) can knock first with the
key that everybody could derive before: the one from TORCHELASTIC_RUN_ID=none.
"""

import os
import time

import ringcomm

world = ringcomm.init()
R = world.rank()
where = os.environ["STRANGER_DIR"]
if R == 0:
    ep = world._backend._ep  # the test needs the port a port scan would find
    address = ep.addrs[0][0]
    with open(os.path.join(where, "address.tmp"), "w") as f:
        f.write(f"{address.host}:{address.port}")
    os.rename(os.path.join(where, "address.tmp"), os.path.join(where, "address"))
    got = ringcomm.recv_object(1)
    print(f"rank 0: received {got!r}", flush=True)
else:
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(where, "go")):
        assert time.monotonic() < deadline, "the test never said go"
        time.sleep(0.05)
    ringcomm.send_object({"from": "rank 1"}, 0)
    print("rank 1: sent", flush=True)
ringcomm.barrier()
