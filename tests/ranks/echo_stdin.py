"""Print what arrives on stdin, prefixed with the rank."""

import os
import sys

data = sys.stdin.read()
print(f"rank {os.environ['RINGCOMM_RANK']} got {data!r}")
