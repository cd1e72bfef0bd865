"""Running another launcher (mpirun, srun) as the job: one guarded process, one report.

The other launcher places and numbers the ranks itself; ringcomm's launcher
runs it under a guard like a rank, forwards its output and stdin, applies
--timeout and Ctrl-C, and exits with its code.
"""

from __future__ import annotations

import shlex
from typing import TextIO

from . import commands
from .options import LaunchConfig
from .output import Output
from .supervisor import Job, RankProcess, Reason

__all__ = ["describe_wrapped", "run_wrapped"]


def describe_wrapped(tool: str, size: int, backend: str, argv: list[str],
                     env: dict[str, str]) -> str:
    """Return the dry-run text: the command line and the variables the ranks get."""
    lines = [f"job: {size} ranks, backend {backend}, started by {tool}",
             f"{tool}: {shlex.join(argv)}"]
    lines += [f"  env: {key}={'<secret>' if key.endswith('TOKEN') else env[key]}"
              for key in sorted(env)]
    return "\n".join(lines)


def run_wrapped(tool: str, argv: list[str], env: dict[str, str], config: LaunchConfig, *,
                stderr: TextIO) -> int:
    """Run `argv` (the other launcher) under a guard; return its exit code."""
    if config.verbose:
        print(f"ringcomm launch: {shlex.join(argv)}", file=stderr, flush=True)
    start = commands.start_frame(argv, env, cwd=None, hostfile=None, hostfile_vars=(),
                                 grace=config.grace)
    proc = RankProcess(rank=0, host="localhost", local=True,
                       argv=commands.guard_argv(config.python_path),
                       preamble=commands.guard_source() + start)
    job = Job([proc], Output(output_dir=config.output_dir), grace=config.grace,
              timeout=config.timeout, forward_stdin=config.forward_stdin)
    result = job.run()
    if result.reason == Reason.FAILED and result.first_failure is not None:
        print(f"ringcomm launch: {tool} {result.first_failure.describe()}", file=stderr,
              flush=True)
    elif result.reason == Reason.TIMEOUT:
        print(f"ringcomm launch: job timed out (--timeout); stopped {tool}", file=stderr)
    elif result.reason == Reason.INTERRUPTED:
        print(f"ringcomm launch: interrupted; stopped {tool}", file=stderr)
    return result.exit_code
