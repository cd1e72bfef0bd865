"""Running another launcher (mpirun, srun) as the job: one guarded process, one report.

The other launcher places and numbers the ranks itself; ringcomm's launcher
runs it under a guard like a rank, forwards its output and stdin, applies
--timeout and Ctrl-C, and exits with its code. Its dry-run text and failure
report are the launcher's own (`report.describe_plan`, `report.failure_report`).
"""

from __future__ import annotations

import re
from typing import TextIO

from . import commands
from .output import Output
from .plan import JobPlan, WrappedLaunch
from .report import describe_plan, failure_report
from .supervisor import Job, JobResult, RankProcess

__all__ = ["run_wrapped"]


def run_wrapped(plan: JobPlan, wrapped: WrappedLaunch, *, stderr: TextIO) -> int:
    """Run ``wrapped`` (the other launcher) under a guard; return its exit code."""
    config = plan.config
    if config.verbose:
        print(describe_plan(plan, wrapped), file=stderr, flush=True)
    start = commands.start_frame(wrapped.argv, wrapped.env, cwd=None, hostfile=None,
                                 hostfile_vars=(), grace=config.grace)
    proc = RankProcess(rank=0, host="localhost", local=True,
                       argv=commands.guard_argv(config.python_path),
                       preamble=commands.guard_source() + start)
    job = Job([proc], Output(output_dir=config.output_dir), grace=config.grace,
              timeout=config.timeout, forward_stdin=config.forward_stdin)
    result = job.run()
    if result.exit_code == 0:
        return 0
    for line in failure_report(result, config.python_path, started_by=wrapped.tool):
        print(line, file=stderr, flush=True)
    first = _first_task_failure(result) if wrapped.tool == "srun" else None
    if first is None:
        return result.exit_code
    rank, code = first
    print(f"ringcomm launch: rank {rank} failed first: exit code {code} (srun reports the "
          f"largest code of any task, {result.exit_code}, counting the ones it stopped); "
          f"exit code {code}", file=stderr, flush=True)
    return code


# srun's line for a task that ended on its own with a non-zero code.
_TASK_EXIT = re.compile(r"srun: error: \S+: task (\d+): Exited with exit code (\d+)")


def _first_task_failure(result: JobResult) -> tuple[int, int] | None:
    """Return (rank, code) of the first task srun saw exit non-zero, as the ring's report would."""
    for e in result.exits:
        for line in e.stderr_tail:
            m = _TASK_EXIT.search(line)
            if m:
                return int(m.group(1)), int(m.group(2))
    return None
