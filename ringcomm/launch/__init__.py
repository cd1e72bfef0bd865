"""The launcher: argparse (cli) -> LaunchConfig -> JobPlan -> guarded ranks (supervisor)."""

from __future__ import annotations

from .api import launch
from .options import Backend, LaunchConfig, LaunchError

__all__ = ["Backend", "LaunchConfig", "LaunchError", "launch"]
