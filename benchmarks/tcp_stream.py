"""One raw TCP stream: the most a link carries, to set collective bandwidths beside.

    python benchmarks/tcp_stream.py recv ADDRESS PORT        # prints one JSON object
    python benchmarks/tcp_stream.py send ADDRESS PORT [--seconds 3]

The sender writes 4 MiB buffers for `--seconds`, then closes; the receiver
counts bytes from the first byte to the end and prints
{"bytes": b, "seconds": s, "GBps": b / s / 1e9}. Both use only the standard
library, so they run in any Python on the test hosts.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

_CHUNK = 4 << 20


def receive(address: str, port: int, timeout: float) -> dict:
    """Accept one connection on address:port and measure what arrives until it closes."""
    with socket.create_server((address, port)) as server:
        server.settimeout(timeout)
        conn, _ = server.accept()
    with conn:
        conn.settimeout(timeout)
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        total = conn.recv_into(view)
        start = time.perf_counter()
        while True:
            n = conn.recv_into(view)
            if n == 0:
                break
            total += n
        seconds = time.perf_counter() - start
    return {"bytes": total, "seconds": seconds, "GBps": total / seconds / 1e9}


def send(address: str, port: int, seconds: float, timeout: float) -> None:
    """Connect (retrying until `timeout`) and write for `seconds`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload = memoryview(bytes(_CHUNK))
    with conn:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(payload)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("send", "recv"))
    ap.add_argument("address")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    if args.mode == "recv":
        print(json.dumps(receive(args.address, args.port, args.timeout)), flush=True)
    else:
        send(args.address, args.port, args.seconds, args.timeout)


if __name__ == "__main__":
    main()
