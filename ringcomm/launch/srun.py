"""Inside a Slurm allocation: the ranks start as one ``srun`` step.

Slurm places, tracks and cleans up the processes; each rank finds its place
from the step's variables and the ranks meet at the step's first node (the
ring's rendezvous). ``--kill-on-bad-exit`` ends the step when a rank fails,
and srun's exit code is the job's.
"""

from __future__ import annotations

import shutil
from typing import TextIO

from .options import LaunchConfig, LaunchError, program_argv
from .plan import JobPlan, WrappedLaunch, rank_env
from .report import describe_plan
from .wrapper import run_wrapped

__all__ = ["launch_srun", "srun_argv"]


def srun_argv(srun: str, ranks: int, argv: list[str], extra: tuple[str, ...] = ()) -> list[str]:
    """Return the srun command line for `ranks` tasks of `argv` in the current allocation."""
    return [srun, f"--ntasks={ranks}", "--kill-on-bad-exit=1", "--export=ALL", *extra, *argv]


def launch_srun(config: LaunchConfig, *, stderr: TextIO, restart: int = 0) -> int:
    """Run the job as one srun step; return srun's exit code."""
    if config.hostfile is not None:
        raise LaunchError("--launcher srun takes its hosts from the Slurm allocation; drop "
                          "--hostfile (or use --launcher ssh)")
    if config.backend not in (None, "ring"):
        raise LaunchError(f"--launcher srun starts ring ranks; --backend {config.backend} is "
                          "for mpirun (or run srun with your MPI's plugin yourself)")
    ranks = len(config.hosts) * config.repeat_hosts
    argv = program_argv(config.command, config.python_path, cwd=config.cwd)
    plan = JobPlan(config=config, backend="ring", ranks=[], argv=argv, restart=restart)
    env = rank_env(plan, None)
    extra = (f"--chdir={config.cwd}",) if config.cwd else ()
    if config.dry_run:
        wrapped = WrappedLaunch("srun", srun_argv("srun", ranks, argv, extra), env, ranks)
        print(describe_plan(plan, wrapped), flush=True)
        return 0
    srun = shutil.which("srun")
    if srun is None:
        raise LaunchError("--launcher srun needs Slurm's srun on PATH; inside an allocation "
                          "(salloc/sbatch) it is there, or use --launcher ssh")
    wrapped = WrappedLaunch("srun", srun_argv(srun, ranks, argv, extra), env, ranks)
    return run_wrapped(plan, wrapped, stderr=stderr)
