"""Strangers knock on rank 1's port: garbage bytes, and a handshake with the wrong token.

Both must be refused without disturbing the job, whose all_sum must then be right.
"""

import json
import os
import socket

import numpy as np

import ringcomm
from ringcomm.errors import ConnectError
from ringcomm.transport import handshake
from ringcomm.transport.net import parse_address

world = ringcomm.init()
R, P = world.rank(), world.size()
ringcomm.barrier()
if R == 0:
    with open(os.environ["RINGCOMM_HOSTFILE"]) as f:
        addr = parse_address(json.load(f)[1][0])
    with socket.create_connection((addr.host, addr.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert s.recv(100) == b"", "the listener answered a stranger"
        except ConnectionResetError:
            pass  # hung up with our bytes unread: a reset
    with socket.create_connection((addr.host, addr.port), timeout=5) as s:
        try:
            hello = handshake.Hello(handshake.Kind.P2P, 0, 0)
            handshake.client(s, b"another job's token", hello)
        except ConnectError as e:
            print(f"rank 0: stranger refused: {e}", flush=True)
        else:
            print("rank 0: stranger admitted", flush=True)
ringcomm.barrier()
y = ringcomm.all_sum(np.full(100_000, R + 1.0))
assert (y == P * (P + 1) / 2).all()
print(f"rank {R}: all_sum ok", flush=True)
