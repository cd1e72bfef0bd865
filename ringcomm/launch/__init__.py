"""The launcher: argparse (cli) -> LaunchConfig -> JobPlan -> guarded ranks (supervisor)."""

from __future__ import annotations

from .api import launch
from .options import LaunchConfig, LaunchError

__all__ = ["LaunchConfig", "LaunchError", "launch"]
