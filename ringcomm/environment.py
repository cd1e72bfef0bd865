"""The environment contract between the launcher and the backends.

The launcher and the backends import nothing from each other; they meet only
in these variable names.
"""

from __future__ import annotations

RANK = "RINGCOMM_RANK"
HOSTFILE = "RINGCOMM_HOSTFILE"
BACKEND = "RINGCOMM_BACKEND"
TOKEN = "RINGCOMM_TOKEN"
TIMEOUT = "RINGCOMM_TIMEOUT"
MLX_RANK = "MLX_RANK"
MLX_HOSTFILE = "MLX_HOSTFILE"

# Seconds any single wait on a peer may last before it becomes an error.
DEFAULT_TIMEOUT = 300.0
